"""The ledger: rows appended to the spool on the request path, shipped by a child process.

:meth:`Ledger.submit` appends the row to this process's spool segment at once (one ``os.write``: the
row survives the gateway being killed from then on) and never waits: a row the spool refuses (full,
failing disk) is dropped and counted. With ``spool_sync="full"`` the caller may also await
:meth:`Ledger.synced`, which resolves once a batched ``fdatasync`` covered its row (power loss); else
a thread syncs every ``fsync_interval_s``. The shipper process (:mod:`._shipd`) moves finished segments
to the store; rows a killed process left in the spool ship when the next one starts.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from loguru import logger

from gpt_observatory.serving_hooks.ledger._meters import Meters
from gpt_observatory.serving_hooks.ledger._row import UsageRow
from gpt_observatory.serving_hooks.ledger._ship import Store
from gpt_observatory.serving_hooks.ledger._shipd import ShipperProcess
from gpt_observatory.serving_hooks.ledger._spool import SpoolError, SpoolWriter, Syncer, line
from gpt_observatory.telemetry import names


class Ledger:
    def __init__(
        self, spool_dir: Path, location: str, *, batch_rows: int = 1000, ship_interval_s: float = 0.2,
        spool_max_mb: float | None = None, spool_sync: str = "normal", commit_wait_s: float = 1.0,
        fsync_interval_s: float = 1.0,
    ) -> None:
        from gpt_observatory.serving_hooks.ledger import open_store

        self.location = location  # the shipper process opens its own connection
        self.store: Store = open_store(location)  # this process's, for reading (GET /admin/usage)
        self.commit_wait_s = commit_wait_s
        self.hold = spool_sync == "full"  # a response waits for its row's fsync
        self.meters = Meters(self.backlog)
        max_bytes = int(spool_max_mb * (1 << 20)) if spool_max_mb is not None else None
        self.writer = SpoolWriter(spool_dir, max_bytes=max_bytes)
        self.syncer = Syncer(self.writer, fsync_interval_s)
        self.shipper = ShipperProcess(spool_dir, location, self.meters, batch_rows=batch_rows,
                                      interval_s=ship_interval_s, before_pass=self._finish_segment)
        self._closed = False
        self._started = False
        self._spool_failing = False

    def _finish_segment(self) -> None:
        """Let the shipper have what was written so far (the open segment is this process's until then)."""
        self.writer.rotate()
        self.writer.sync(current_too=False)

    def backlog(self) -> tuple[int, float]:
        """(rows not yet shipped: this process's open segment and what the shipper could not ship yet,
        seconds since the oldest of them was written)."""
        rows, lag = self.shipper.backlog
        first = self.writer.first_added
        if self.writer.rows and first is not None:
            lag = max(lag, time.time() - first)
        return rows + self.writer.rows, lag

    def start(self) -> None:
        """Start syncing and the shipper process (rows an earlier process left in the spool go first)."""
        self._started = True
        self.syncer.start()
        self.shipper.start()

    def submit(self, row: UsageRow) -> bool:
        """Append ``row`` to the spool; never waits. False: it could not be (dropped, counted)."""
        if self._closed:
            self.meters.dropped("closed")
            return False
        try:
            self.writer.append(line(row, time.time()))
        except SpoolError as e:
            self.meters.dropped("spool_error")
            if not self._spool_failing:
                logger.error("ledger: usage rows cannot be written and are lost (counted in {}): {} (free space "
                             "or raise OBSERVATORY_SERVE_LEDGER_SPOOL_MAX_MB)", names.LEDGER_ROWS_DROPPED.name, e)
            self._spool_failing = True
            return False
        if self._spool_failing:
            logger.info("ledger: the spool takes rows again")
            self._spool_failing = False
        self.meters.written(1)
        return True

    def synced(self) -> asyncio.Future[None] | None:
        """On an event loop: a future done once what was submitted so far survives power loss; None when
        the ledger is not started (nobody is kept waiting for a thread that does not run)."""
        if not self._started or self._closed:
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            try:
                loop.call_soon_threadsafe(_settle, future)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass

        self.syncer.synced(done)
        return future

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Block until the shipper emptied the spool of what was submitted before (False: not within
        ``timeout_s``: the store is down, or not started)."""
        if not self._started:
            return False
        return self.shipper.drained(time.monotonic() + timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Sync and let go of the open segment, ship what the store takes within ``timeout_s``, close."""
        if self._closed:
            return
        self._closed = True
        self.writer.close()
        self.syncer.close(timeout_s)
        self.shipper.close(timeout_s)
        self.store.close()


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
