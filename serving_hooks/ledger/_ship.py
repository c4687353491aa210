"""Shipping: batches from the spool's sealed segments to the ledger store.

A segment is shipped by whoever holds its claim (no live writer has it open: a gateway moved on to its
next segment, or was killed). A batch counts as shipped (the segment's offset moves past it) only after
the store committed it; a store that fails (down, restarting, refusing) leaves the rows where they are,
to be retried. The same batch may so reach the store twice (its answer lost): the store ignores rows it
has. The gateway runs this in its own process (:mod:`._shipd`), off the request path's interpreter.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from gpt_observatory.serving_hooks.ledger import _segments
from gpt_observatory.serving_hooks.ledger._row import UsageRow
from gpt_observatory.serving_hooks.ledger._segments import Claim


class Store(Protocol):
    placeholder: str
    dialect: str

    def insert(self, rows: list[UsageRow]) -> int: ...

    def query(self, sql: str, params: Any) -> list[tuple]: ...

    def close(self) -> None: ...


class Meters(Protocol):
    def shipped(self, n: int) -> None: ...

    def dropped(self, reason: str, n: int = 1) -> None: ...


class Shipper:
    def __init__(self, folder: Path, store: Store, meters: Meters, *, batch_rows: int) -> None:
        self.folder, self.store, self.meters, self.batch_rows = folder, store, meters, batch_rows
        self.shipped = 0  # rows the store took (new or not)

    def ship_once(self) -> int:
        """Ship every segment nobody writes; returns the rows shipped. Raises what the store raised."""
        total = 0
        for segment in _segments.segments(self.folder):
            claim = Claim.take(segment)
            if claim is None:
                continue  # a live writer has it (or another shipper just shipped it)
            try:
                total += self._ship(segment)
            finally:
                claim.release()
        return total

    def _ship(self, segment: Path) -> int:
        offset = _segments.shipped_offset(segment)
        total = 0
        while True:
            batch = _segments.read(segment, offset, self.batch_rows)
            if batch.corrupt:
                self.meters.dropped("corrupt", batch.corrupt)
            if batch.rows:
                self.store.insert(batch.rows)
            if batch.end == offset:
                break
            offset = batch.end
            _segments.mark_shipped(segment, offset)
            total += len(batch.rows)
            self.shipped += len(batch.rows)
            self.meters.shipped(len(batch.rows))
        if offset < _segments.size(segment):  # a last line a crash left unfinished: nobody will finish it
            self.meters.dropped("corrupt")
        _segments.forget(segment)
        return total

    def backlog(self) -> tuple[int, float]:
        """(rows in segments nobody writes, not yet shipped; seconds since the oldest of them was added)."""
        rows = 0
        oldest: float | None = None
        for segment in _segments.segments(self.folder):
            claim = Claim.take(segment)
            if claim is None:
                continue  # its writer reports it
            try:
                offset = _segments.shipped_offset(segment)
                left = _segments.count_rows(segment, offset)
                if left and oldest is None:
                    oldest = _segments.oldest_added(segment, offset)
                rows += left
            finally:
                claim.release()
        return rows, (max(0.0, time.time() - oldest) if oldest is not None else 0.0)
