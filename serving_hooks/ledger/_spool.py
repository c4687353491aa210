"""The durable local spool: a folder of append-only segment files, one row per line (write side).

Writing a row is one ``os.write`` on an ``O_APPEND`` file descriptor, on the request path itself: about
a microsecond, no thread to hand over to, no lock another process holds. Once ``write`` returned, the row
is in the kernel's page cache and survives the gateway being killed; ``fdatasync`` (batched, by the
:class:`Syncer` thread) makes it survive power loss too.

Each process appends to its own segment (``<pid>-<ns>.rows``), holding an exclusive ``flock`` on it.
Every ``segment_age_s`` (or past ``segment_bytes``) it starts the next one; the syncer syncs and closes the
old one, which lets go of the lock: from then on any shipper may claim it (:mod:`._segments`).
``max_bytes`` bounds the folder: past it rows are refused (``SpoolError``) and counted as dropped, as on
a full disk; a short or failed write is cut back, so a segment holds only whole lines.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from gpt_observatory.serving_hooks.ledger._row import UsageRow
from gpt_observatory.serving_hooks.ledger._segments import SUFFIX, segments, size

SEGMENT_BYTES = 8 << 20
SEGMENT_AGE_S = 1.0  # rows reach the shipper at most this long after they were written
_RESCAN_S = 1.0  # how often a writer near its bound re-reads the folder's size (shippers delete segments)


class SpoolError(Exception):
    """The spool could not take a row (disk full, its size bound, I/O error)."""


def line(row: UsageRow, added: float) -> bytes:
    """The spool's line for ``row`` (orjson writes a dataclass itself)."""
    return orjson.dumps({"added": added, "row": row}, option=orjson.OPT_APPEND_NEWLINE)


class SpoolWriter:
    """This process's appender. Thread-safe; each :meth:`append` is one write of whole lines."""

    def __init__(self, folder: Path, *, max_bytes: int | None = None, segment_bytes: int = SEGMENT_BYTES,
                 segment_age_s: float = SEGMENT_AGE_S) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.max_bytes, self.segment_bytes, self.segment_age_s = max_bytes, segment_bytes, segment_age_s
        self._lock = threading.Lock()
        self._fd = -1
        self.segment: Path | None = None
        self._size = 0  # of the open segment (this process is its only writer)
        self.rows = 0  # in the open segment
        self.first_added: float | None = None  # when the open segment's first row was written
        self._retired: list[int] = []  # descriptors of finished segments, for the syncer to sync and close
        self._others = 0  # bytes in the folder besides the open segment, as last read
        self._read_at = float("-inf")
        self.closed = False

    def append(self, data: bytes, rows: int = 1) -> None:
        """Append ``data`` (whole lines). Raises :class:`SpoolError`."""
        with self._lock:
            if self.closed:
                raise SpoolError("the spool is closed")
            if self._fd < 0 or self._size + len(data) > self.segment_bytes:
                self._next_segment()
            if self.max_bytes is not None and self._over(len(data)):
                raise SpoolError(f"ledger spool {self.folder} holds its limit of {self.max_bytes} bytes")
            try:
                written = os.write(self._fd, data)
            except OSError as e:
                self._cut_back()
                raise SpoolError(f"ledger spool {self.segment}: {e.strerror or e}") from e
            if written != len(data):  # a full disk can take part of it: keep whole lines only
                self._cut_back()
                raise SpoolError(f"ledger spool {self.segment}: short write (disk full?)")
            self._size += written
            if not self.rows:
                self.first_added = time.time()
            self.rows += rows

    def _over(self, more: int) -> bool:
        now = time.monotonic()
        if self._others + self._size + more > self.max_bytes and now - self._read_at > _RESCAN_S:
            self._others = sum(size(p) for p in segments(self.folder) if p != self.segment)
            self._read_at = now
        return self._others + self._size + more > self.max_bytes  # type: ignore[operator]

    def _cut_back(self) -> None:
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            pass

    def _next_segment(self) -> None:
        self._retire()
        path = self.folder / f"{os.getpid()}-{time.time_ns()}{SUFFIX}"
        making = path.with_suffix(".new")  # not a segment until locked: no shipper may take it empty
        try:
            fd = os.open(making, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(making, path)
        except OSError as e:
            raise SpoolError(f"ledger spool {self.folder}: {e.strerror or e}") from e
        self._fd, self.segment, self._size, self.rows, self.first_added = fd, path, 0, 0, None
        self._opened = time.monotonic()

    def _retire(self) -> None:
        """Finish the open segment (under the lock): the syncer syncs and closes it, off the request path."""
        if self._fd >= 0:
            self._retired.append(self._fd)
            self._others += self._size
            self._fd, self.segment, self.rows, self.first_added = -1, None, 0, None

    def rotate(self, older_than_s: float = 0.0) -> None:
        """Finish the open segment if it has rows and is older than ``older_than_s``."""
        with self._lock:
            if self._fd >= 0 and self.rows and time.monotonic() - self._opened >= older_than_s:
                self._retire()

    def sync(self, current_too: bool = True) -> None:
        """Sync and close the finished segments (letting go of their locks), then sync the open one."""
        with self._lock:
            retired, self._retired = self._retired, []
            current = os.dup(self._fd) if self._fd >= 0 and current_too else -1
        for fd in retired:
            try:
                os.fdatasync(fd)
            except OSError:
                pass  # the page cache still has it: a killed gateway loses nothing
            os.close(fd)
        if current >= 0:
            try:
                os.fdatasync(current)
            except OSError:
                pass
            finally:
                os.close(current)

    def close(self) -> None:
        with self._lock:
            self._retire()
            self.closed = True
        self.sync()


class Syncer:
    """The writer's thread: every ``tick_s`` it finishes a segment older than the writer's
    ``segment_age_s``; every ``fsync_interval_s`` (and at once when someone waits on :meth:`synced`:
    they share one sync, the more load the larger the batch) it fdatasyncs what was appended."""

    def __init__(self, writer: SpoolWriter, fsync_interval_s: float, tick_s: float = 0.25) -> None:
        self.writer, self.fsync_interval_s, self.tick_s = writer, fsync_interval_s, tick_s
        self._wanted = threading.Condition()
        self._waiters: list[Callable[[], None]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="observatory-ledger-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def synced(self, done: Callable[[], None]) -> None:
        """Call ``done()`` (from the syncer's thread) once what was appended before this call is synced."""
        with self._wanted:
            self._waiters.append(done)
            self._wanted.notify()

    def _run(self) -> None:
        synced_at = time.monotonic()
        while True:
            with self._wanted:
                if not self._waiters and not self._stop:
                    self._wanted.wait(self.tick_s)
                waiters, self._waiters = self._waiters, []
                stop = self._stop
            self.writer.rotate(self.writer.segment_age_s)
            now = time.monotonic()
            due = bool(waiters) or now - synced_at >= self.fsync_interval_s
            if due:
                synced_at = now
            self.writer.sync(current_too=due)  # finished segments at every tick: their shipper waits
            for done in waiters:
                done()
            if stop:
                return

    def close(self, timeout_s: float) -> None:
        with self._wanted:
            self._stop = True
            self._wanted.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
