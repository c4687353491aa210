"""The shipper: a thread moving batches from the spool to the ledger store.

A batch leaves the spool only after the store committed it; a store that fails (down, restarting,
refusing) keeps the batch in the spool and is retried with a backoff growing to ``max_backoff_s``.
The same batch may so reach the store twice (its answer lost): the store ignores rows it has.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from loguru import logger

from gpt_observatory.serving_hooks.ledger._row import UsageRow
from gpt_observatory.serving_hooks.ledger._spool import Spool


class Store(Protocol):
    placeholder: str
    dialect: str

    def insert(self, rows: list[UsageRow]) -> int: ...

    def query(self, sql: str, params: Any) -> list[tuple]: ...

    def close(self) -> None: ...


class Shipper:
    def __init__(self, spool: Spool, store: Store, meters: Any, *, batch_rows: int, interval_s: float,
                 max_backoff_s: float = 5.0) -> None:
        self.spool, self.store, self.meters = spool, store, meters
        self.batch_rows, self.interval_s, self.max_backoff_s = batch_rows, interval_s, max_backoff_s
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="observatory-ledger-ship", daemon=True)
        self.shipped = 0  # rows the store took (new or not), for tests and the bench
        self._passes = 0  # shipping passes done (a pass that empties the spool ends with backlog 0)
        self._passed = threading.Condition()

    def start(self) -> None:
        self._thread.start()

    def ship_once(self) -> int:
        """Ship batches until the spool is empty; returns the rows shipped. Raises what the store raised."""
        total = 0
        while True:
            batch = self.spool.take(self.batch_rows)
            if not batch:
                return total
            self.store.insert([row for _, row in batch])
            self.spool.remove(seq for seq, _ in batch)
            total += len(batch)
            self.shipped += len(batch)
            self.meters.shipped(len(batch))
            if len(batch) < self.batch_rows:
                return total

    def _run(self) -> None:
        backoff = self.interval_s
        failing = False
        while not self._stop.is_set():
            try:
                self.ship_once()
            except Exception as e:  # the store is down or refused: keep the rows, try again later
                self.meters.ship_failed()
                if not failing:
                    logger.warning("ledger: shipping to the store failed ({}); rows stay in the spool {} and "
                                   "are retried", type(e).__qualname__, self.spool.path)
                failing = True
                backoff = min(self.max_backoff_s, max(backoff * 2, 0.05))
            else:
                if failing:
                    logger.info("ledger: shipping to the store resumed")
                failing = False
                backoff = self.interval_s
            backlog = self.spool.backlog()
            self.meters.backlog = backlog
            with self._passed:
                self._passes += 1
                self._passed.notify_all()
            if backlog[0] >= self.batch_rows and not failing:
                continue  # more than one batch waiting: no pause
            self.wake.wait(backoff)
            self.wake.clear()

    def drained(self, deadline: float) -> bool:
        """Wait (to the ``time.monotonic()`` deadline) for a pass begun after this call that left the spool
        empty; True when one did."""
        with self._passed:
            start = self._passes
            while True:
                self.wake.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._passed.wait(min(remaining, 0.05))
                if self._passes >= start + 2 and self.meters.backlog[0] == 0:
                    return True

    def close(self, timeout_s: float) -> None:
        """Stop the thread, then one last try to ship what is left (bounded by the store's own timeouts)."""
        self._stop.set()
        self.wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        try:
            self.ship_once()
        except Exception as e:
            logger.warning("ledger: rows left in the spool {} at close ({}); they ship on the next start",
                           self.spool.path, type(e).__qualname__)
