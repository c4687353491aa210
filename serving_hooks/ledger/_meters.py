"""The ledger's own telemetry (names.py, block ``ledger (issue 17)``)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.summed import SummedCounter


class Meters:
    """Counters (summed in process, any thread) and the spool backlog the gauges read."""

    def __init__(self, backlog: Callable[[], tuple[int, float]] = lambda: (0, 0.0)) -> None:
        self._written = SummedCounter.of(__name__, names.LEDGER_ROWS_WRITTEN)
        self._shipped = SummedCounter.of(__name__, names.LEDGER_ROWS_SHIPPED)
        self._dropped = SummedCounter.of(__name__, names.LEDGER_ROWS_DROPPED)
        self._failures = SummedCounter.of(__name__, names.LEDGER_SHIP_FAILURES)
        self.read_backlog = backlog  # (rows, lag s): read by the gauges
        self.dropped_total = 0
        _LEDGERS.add(self)
        _watch(metrics.get_meter(__name__))

    @property
    def backlog(self) -> tuple[int, float]:
        return self.read_backlog()

    def written(self, n: int) -> None:
        self._written.add(n, _NONE)

    def shipped(self, n: int) -> None:
        self._shipped.add(n, _NONE)

    def dropped(self, reason: str, n: int = 1) -> None:
        self.dropped_total += n
        self._dropped.add(n, {names.LEDGER_DROP_REASON: reason})

    def ship_failed(self) -> None:
        self._failures.add(1, _NONE)


_NONE: dict[str, Any] = {}
_LEDGERS: weakref.WeakSet[Meters] = weakref.WeakSet()
_watched: set[int] = set()


def _watch(meter: metrics.Meter) -> None:
    """One pair of gauges per meter reading every live ledger (an observable keeps its first callbacks)."""
    if id(meter) in _watched:
        return
    _watched.add(id(meter))
    for m, index in ((names.LEDGER_SPOOL_ROWS, 0), (names.LEDGER_LAG, 1)):
        meter.create_observable_gauge(m.name, [_observer(index)], m.unit, m.description)


def _observer(index: int):
    def observe(options: CallbackOptions) -> Iterator[Observation]:
        live = list(_LEDGERS)
        if live:
            values = [m.backlog[index] for m in live]
            yield Observation(sum(values) if index == 0 else max(values))
    return observe
