"""Files the ``jsonl`` backend appends to: whole lines or nothing, rotated by size, failures logged.

Each append is one ``os.write`` on an ``O_APPEND`` descriptor, so a line lands whole (the kernel
places it at the end of the file even with several writers). A failed or short write (a full disk)
is cut back to the size before it, so no torn line survives to glue itself to the next record; the
records that did not fit are returned as dropped, and a warning saying how many were dropped is
logged at most once a minute.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path

from loguru import logger

REPORT_EVERY_S = 60.0  # at most one warning per file in this time


class RotatingFile:
    """Appends lines; when the file passes ``max_bytes`` it becomes ``.1`` (``backups`` kept).

    Several processes may append to one file (the demo's gateway and flows share a state folder):
    the size is the file's own, rotation runs under an exclusive ``flock`` on ``<name>.lock``, and a
    process that finds the file already rotated by another reopens it instead of rotating again (two
    rotations in a row would rename the fresh file over the full backup and lose it).
    """

    def __init__(self, path: Path, max_bytes: int, backups: int):
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._lockfile = path.with_name(path.name + ".lock")
        self._fd = self._open()
        self._failures = _FailureReport(path)

    def write_lines(self, lines: list[bytes]) -> int:
        """Append ``lines`` (each ending in a newline), each one whole or not at all; return how many
        were dropped because writing failed."""
        if not lines:
            return 0
        data = b"".join(lines)
        error: OSError | None = None
        with self._lock:
            try:
                size = os.fstat(self._fd).st_size
                if size and size + len(data) > self.max_bytes:
                    self._rotate_shared(len(data))
                    size = os.fstat(self._fd).st_size
                error = self._append(data, size)
                dropped = 0
                if error is not None:  # the batch did not fit: keep the lines that still do
                    dropped = len(lines) if len(lines) == 1 else sum(self._append(line) is not None for line in lines)
            except OSError as e:  # the file itself is gone or cannot be reopened after a rotation
                error, dropped = e, len(lines)
        if error is None:
            self._failures.wrote()
        else:
            self._failures.dropped(dropped, error)
        return dropped

    def _append(self, data: bytes, size: int | None = None) -> OSError | None:
        """One atomic append of ``data``; on failure the file is cut back and the error returned."""
        before = os.fstat(self._fd).st_size if size is None else size
        try:
            written = os.write(self._fd, data)
        except OSError as e:
            self._cut(before)
            return e
        if written != len(data):
            self._cut(before)
            return OSError(errno.ENOSPC, f"short write: {written} of {len(data)} bytes")
        return None

    def _cut(self, size: int) -> None:
        # Another process appending at this very moment would lose its line too; on a full disk its
        # write fails as well, and a torn line that stays would corrupt the next record for good.
        try:
            if os.fstat(self._fd).st_size > size:
                os.ftruncate(self._fd, size)
        except OSError as e:
            logger.debug("could not cut {} back to {} bytes: {}", self.path, size, e)

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _rotate_shared(self, incoming: int) -> None:
        with open(self._lockfile, "ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed
            if not self._still_current():
                self._reopen()  # another process rotated it: append to the new file
                size = os.fstat(self._fd).st_size
                if not size or size + incoming <= self.max_bytes:
                    return
            self._rotate()

    def _still_current(self) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(self._fd)
        return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

    def _reopen(self) -> None:
        fd = self._open()  # first: if it fails, the old descriptor stays valid (never a reused number)
        os.close(self._fd)
        self._fd = fd

    def _rotate(self) -> None:
        if self.backups:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._reopen()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class _FailureReport:
    """Tallies dropped records and says so in a warning, at most once every :data:`REPORT_EVERY_S`."""

    def __init__(self, path: Path):
        self._path = path
        self._lock = threading.Lock()
        self._pending = 0  # dropped and not reported yet
        self._last: float | None = None  # when the last warning went out
        self._error: OSError | None = None

    def dropped(self, n: int, error: OSError) -> None:
        with self._lock:
            self._pending += n
            self._error = error
            first = self._last is None
            if not self._due():
                return
            pending, self._pending, self._last = self._pending, 0, time.monotonic()
        again = "" if first else " since the last warning"
        logger.warning(
            "telemetry: dropped {} records{}: could not append to {} ({}); "
            "this warning repeats at most once a minute while writes fail",
            pending, again, self._path, error,
        )

    def wrote(self) -> None:
        if not self._pending:  # the usual case: nothing to say, no lock taken
            return
        with self._lock:
            if not self._pending or not self._due():
                return
            pending, self._pending, self._last = self._pending, 0, time.monotonic()
            error = self._error
        logger.warning("telemetry: writing to {} again; {} more records were dropped before ({})",
                       self._path, pending, error)

    def _due(self) -> bool:
        return self._last is None or time.monotonic() - self._last >= REPORT_EVERY_S
