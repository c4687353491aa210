"""The spool's read side: listing, reading, claiming and removing segments (see :mod:`._spool`).

A segment is claimed with an exclusive ``flock``; its writer holds one while it appends, so a claim
succeeds only on a segment nobody writes any more (finished, or left by a process that died: the kernel
drops a dead process's locks). How far a segment was shipped is kept beside it (``<segment>.shipped``).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from gpt_observatory.serving_hooks.ledger._row import UsageRow

SUFFIX = ".rows"
SHIPPED = ".shipped"


def segments(folder: Path) -> list[Path]:
    """The folder's segments, oldest first (by their creation time, then pid)."""
    found = [p for p in folder.glob(f"*{SUFFIX}") if p.is_file()]
    return sorted(found, key=lambda p: (_born(p), p.name))


def _born(path: Path) -> int:
    try:
        return int(path.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def count_rows(segment: Path, offset: int) -> int:
    """Whole lines of ``segment`` after ``offset``."""
    try:
        with open(segment, "rb") as f:
            f.seek(offset)
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0


@dataclass
class Batch:
    rows: list[UsageRow]
    end: int  # the segment's offset after these rows
    corrupt: int  # lines that were not rows (skipped, counted)
    oldest: float | None  # when the first of them was added


def shipped_offset(segment: Path) -> int:
    try:
        return int((segment.parent / (segment.name + SHIPPED)).read_text() or 0)
    except (OSError, ValueError):
        return 0


def mark_shipped(segment: Path, offset: int) -> None:
    """Remember (atomically) that ``segment`` is shipped up to ``offset``."""
    mark = segment.parent / (segment.name + SHIPPED)
    tmp = mark.with_suffix(".tmp")
    tmp.write_text(str(offset))
    os.replace(tmp, mark)


def forget(segment: Path) -> None:
    for p in (segment, segment.parent / (segment.name + SHIPPED)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def read(segment: Path, offset: int, limit: int, chunk: int = 1 << 20) -> Batch:
    """Up to ``limit`` whole rows of ``segment`` from ``offset``."""
    rows: list[UsageRow] = []
    corrupt = 0
    oldest: float | None = None
    end = offset
    try:
        with open(segment, "rb") as f:
            f.seek(offset)
            while len(rows) < limit:
                data = f.read(chunk)
                if not data:
                    break
                whole = False
                for raw in _lines(data):
                    whole = True
                    end += len(raw)
                    try:
                        item = orjson.loads(raw)
                        rows.append(UsageRow.from_dict(item["row"]))
                        if oldest is None:
                            oldest = float(item["added"])
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        corrupt += 1
                    if len(rows) >= limit:
                        break
                if not whole:
                    if len(data) < chunk:
                        break  # a last line still being written
                    chunk *= 2  # a line longer than the chunk
                f.seek(end)
    except FileNotFoundError:
        pass
    return Batch(rows, end, corrupt, oldest)


def _lines(data: bytes) -> Iterator[bytes]:
    """The whole lines in ``data`` (a last one without its newline is left for later)."""
    start = 0
    while (stop := data.find(b"\n", start)) >= 0:
        yield data[start:stop + 1]
        start = stop + 1


def oldest_added(segment: Path, offset: int) -> float | None:
    """When the first row of ``segment`` after ``offset`` was added (None: none there)."""
    batch = read(segment, offset, 1, chunk=64 << 10)
    return batch.oldest


class Claim:
    """An exclusive hold of a segment nobody writes (``None`` from :meth:`take` when someone does)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def take(cls, segment: Path) -> Claim | None:
        try:
            fd = os.open(segment, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if not segment.exists():  # shipped and deleted by another process while we waited
            os.close(fd)
            return None
        return cls(fd)

    def release(self) -> None:
        os.close(self._fd)
