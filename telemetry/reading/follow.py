"""Following a signal's files as they grow, like ``tail -F``, across rotation and truncation.

Files are tracked by inode, not by name: a rotation renames the live file (ours to ``.1``, the
collector's lumberjack to a stamped name) and its unread tail is still read under the new name, so
nothing is lost or read twice. A file that shrinks was truncated and is read again from its start;
new files are found by listing the source on every poll; files that disappear are forgotten, so
memory stays bounded by the number of files, not by what was read. Only complete lines are consumed:
a line a writer is halfway through is read on a later poll.

Hand-rolled (about 100 lines): the libraries that follow files (``pygtail``, ``watchdog``) either
keep offsets in side files or watch directories without reading, and neither knows rotation by
rename across two naming schemes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from gpt_observatory.telemetry.reading.files import ReadStats, Signal, open_lines, signal_files

T = TypeVar("T")

_CHUNK = 1 << 20
_MAX_LINE = 16 << 20
_HEAD = 256
# A file mid-rename can be missing from one listing; it is forgotten only after this many polls
# without it (forgetting it at once would read it again from its start when it reappears).
_FORGET_AFTER = 8


@dataclass
class _Tail:
    offset: int = 0
    done: bool = False  # gzip: read once, whole
    missed: int = 0  # polls in a row that did not find it
    head: bytes = b""  # its first bytes: a new file that got a freed inode number differs here


class Follower(Generic[T]):
    """Yields the records appended to ``source``'s ``signal`` files since the last ``poll()``.

    The first poll reads every file from its start (``from_start``) or only records where each file
    ends (``from_start=False``); later polls read what was appended, and new files from their start.
    """

    def __init__(
        self,
        source: Path,
        signal: Signal,
        parse: Callable[[bytes], list[T]],
        *,
        from_start: bool = True,
        stats: ReadStats | None = None,
    ):
        self.source, self.signal, self.parse = Path(source), signal, parse
        self.stats = stats if stats is not None else ReadStats()
        self._tails: dict[tuple[int, int], _Tail] = {}
        self._primed = False
        self._from_start = from_start
        self._listing: frozenset[tuple[str, tuple[int, int]]] = frozenset()
        self.changed = False

    @property
    def tracked_files(self) -> int:
        return len(self._tails)

    def poll(self) -> Iterator[T]:
        """Everything new since the last poll, file by file (oldest first). Afterwards ``changed``
        says whether the files were renamed, added or removed since the poll before: a rotation
        during this poll may have hidden an older file's tail from it, so poll again before
        ordering what was read."""
        seen: set[tuple[int, int]] = set()
        listing: set[tuple[str, tuple[int, int]]] = set()
        first = not self._primed
        self._primed = True
        for path in signal_files(self.source, self.signal):
            try:
                st = path.stat()
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            seen.add(key)
            listing.add((path.name, key))
            tail = self._tails.get(key)
            if tail is not None:
                tail.missed = 0
            if tail is None:
                tail = self._tails[key] = _Tail()
                gz = path.suffix == ".gz"
                if gz and not first:
                    # A compressed copy of a file already followed under its old name.
                    tail.done = True
                    continue
                if not first or self._from_start:
                    if gz:
                        tail.done = True
                        yield from self._read_gzip(path)
                        continue
                else:
                    tail.offset = st.st_size if not gz else 0
                    tail.done = gz
                    continue
            if tail.done:
                continue
            if st.st_size < tail.offset:
                tail.offset = 0  # truncated: start again, as tail -F does
            if st.st_size > tail.offset:
                yield from self._read_from(path, key, tail)
        self.changed, self._listing = frozenset(listing) != self._listing, frozenset(listing)
        for key in self._tails.keys() - seen:
            tail = self._tails[key]
            tail.missed += 1
            if tail.missed >= _FORGET_AFTER:
                del self._tails[key]

    def _read_gzip(self, path: Path) -> Iterator[T]:
        try:
            with open_lines(path) as fh:
                self.stats.files += 1
                for line in fh:
                    yield from self._parse(line)
        except (OSError, EOFError):
            self.stats.bad_lines += 1

    def _read_from(self, path: Path, key: tuple[int, int], tail: _Tail) -> Iterator[T]:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError:
            return
        with fh:
            st = os.fstat(fh.fileno())
            if (st.st_dev, st.st_ino) != key:
                return  # the name moved to another file between stat and open; next poll
            if tail.offset and tail.head and os.pread(fh.fileno(), len(tail.head), 0) != tail.head:
                tail.offset = 0  # another file under a reused inode number
            if not tail.offset:
                tail.head = os.pread(fh.fileno(), _HEAD, 0)
            fh.seek(tail.offset)
            pending = b""
            while True:
                chunk = fh.read(_CHUNK)
                if not chunk:
                    break
                data = pending + chunk
                end = data.rfind(b"\n")
                if end < 0:
                    if len(data) > _MAX_LINE:  # no newline in 16 MiB: not a line, skip it
                        self.stats.bad_lines += 1
                        tail.offset += len(data)
                        pending = b""
                    else:
                        pending = data
                    continue
                pending = data[end + 1 :]
                tail.offset += end + 1
                for line in data[: end + 1].splitlines():
                    yield from self._parse(line)

    def _parse(self, line: bytes) -> list[T]:
        try:
            return self.parse(line)
        except (ValueError, KeyError, TypeError, AttributeError):
            self.stats.bad_lines += 1
            return []
