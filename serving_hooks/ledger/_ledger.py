"""The ledger: rows handed over on the request path, written by a thread, shipped by another.

:meth:`Ledger.submit` never blocks: the row goes on a bounded queue (full: dropped and counted) and a
writer thread commits whatever has gathered as one spool transaction (group commit: the more load,
the larger the batch). A caller that wants to know its row is durable awaits the future ``submit``
returns (the ledger middleware holds a response's last message until then, at most
``commit_wait_s``). The shipper moves spooled rows to the store; rows a killed process left in the
spool ship when the next one starts.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from pathlib import Path

from loguru import logger

from gpt_observatory.serving_hooks.ledger._meters import Meters
from gpt_observatory.serving_hooks.ledger._row import UsageRow
from gpt_observatory.serving_hooks.ledger._ship import Shipper, Store
from gpt_observatory.serving_hooks.ledger._spool import Spool, SpoolError
from gpt_observatory.telemetry import names

_STOP = object()


class Ledger:
    def __init__(
        self, spool_path: Path, store: Store, *, batch_rows: int = 1000, ship_interval_s: float = 0.2,
        queue_rows: int = 65536, spool_max_mb: float | None = None, spool_sync: str = "normal",
        commit_wait_s: float = 1.0,
    ) -> None:
        self.store = store
        self.commit_wait_s = commit_wait_s
        self.meters = Meters()
        self._queue: queue.Queue = queue.Queue(queue_rows)
        self._spool = Spool(spool_path, max_mb=spool_max_mb, sync=spool_sync)
        self.shipper = Shipper(Spool(spool_path, max_mb=spool_max_mb, sync=spool_sync), store, self.meters,
                               batch_rows=batch_rows, interval_s=ship_interval_s)
        self.batch_rows = batch_rows
        self._writer = threading.Thread(target=self._write, name="observatory-ledger-write", daemon=True)
        self._closed = False
        self._started = False
        self._spool_failing = False

    def start(self) -> None:
        """Start writing and shipping (rows an earlier process left in the spool go first)."""
        self._started = True
        self._writer.start()
        self.shipper.start()

    def submit(self, row: UsageRow, wait: bool = False) -> asyncio.Future[bool] | None:
        """Queue ``row``; never blocks. With ``wait`` (on an event loop): a future that is True once the
        row is in the spool, False when it could not be (counted); None when it was dropped at once, or
        the ledger is not started yet (the row waits in the queue: nobody is kept waiting for it)."""
        if self._closed:
            self.meters.dropped("closed")
            return None
        future = asyncio.get_running_loop().create_future() if wait and self._started else None
        try:
            self._queue.put_nowait((row, future))
        except queue.Full:
            self.meters.dropped("queue_full")
            return None
        return future

    def _write(self) -> None:
        stop = False
        while not stop:
            items = [self._queue.get()]
            while len(items) < self.batch_rows:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if items[-1] is _STOP:
                stop = True
                items.pop()
            batch = [i for i in items if isinstance(i, tuple)]
            if batch:
                fates = self._commit([row for row, _ in batch])
                _resolve([(f, ok) for (_, f), ok in zip(batch, fates, strict=True) if f is not None])
            for i in items:
                if isinstance(i, _Marker):
                    i.done.set()

    def _commit(self, rows: list[UsageRow]) -> list[bool]:
        """Append ``rows``; a batch the spool refuses is split in halves (as much as fits is kept).
        Returns each row's fate."""
        try:
            self._spool.append(rows)
        except SpoolError as e:
            if len(rows) > 1:
                half = len(rows) // 2
                return self._commit(rows[:half]) + self._commit(rows[half:])
            self.meters.dropped("spool_error")
            if not self._spool_failing:
                logger.error("ledger: usage rows cannot be written and are lost (counted in {}): {} (free space "
                             "or raise OBSERVATORY_SERVE_LEDGER_SPOOL_MAX_MB)", names.LEDGER_ROWS_DROPPED.name, e)
            self._spool_failing = True
            return [False]
        if self._spool_failing:
            logger.info("ledger: the spool takes rows again")
        self._spool_failing = False
        self.meters.written(len(rows))
        return [True] * len(rows)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Block until what was submitted before is in the spool and the shipper emptied the spool
        (False: not within ``timeout_s``: the store is down, or the spool refused rows)."""
        done = threading.Event()
        self._queue.put(_Marker(done))
        deadline = time.monotonic() + timeout_s
        if not done.wait(timeout_s):
            return False
        return self.shipper.drained(deadline)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, ship what the store takes within ``timeout_s``, close the files."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join(timeout_s)
        self.shipper.close(timeout_s)
        self.meters.backlog = self.shipper.spool.backlog()
        self._spool.close()
        self.shipper.spool.close()
        self.store.close()


class _Marker:
    """A queue item that is not a row: sets its event when the writer reaches it."""

    def __init__(self, done: threading.Event) -> None:
        self.done = done


def _resolve(waiting: list[tuple[asyncio.Future[bool], bool]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], bool]]] = {}
    for f, ok in waiting:
        by_loop.setdefault(f.get_loop(), []).append((f, ok))
    for loop, group in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, group)
        except RuntimeError:  # that loop is closed: nobody waits any more
            pass


def _settle(group: list[tuple[asyncio.Future[bool], bool]]) -> None:
    for f, ok in group:
        if not f.done():
            f.set_result(ok)
