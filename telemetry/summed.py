"""Counters for the request path: summed in process, reported when a reader collects.

A synchronous OpenTelemetry counter does all its work on every ``add``: it copies and validates
the attributes, hashes them, finds the aggregation under a lock and offers the value to the
exemplar reservoir, about 10 µs per call on a small CPU, and the gateway makes half a dozen such
calls per request. :class:`SummedCounter` keeps the running sums in a dict instead (an ``add`` is
one dict update under a lock) and an observable instrument of the same name, unit and
description hands them to the readers at collection time, so exporters see the cumulative sum a
synchronous counter would give. What this gives up: exemplars on these counters (no Observatory
backend exports them). The sums are exact at every collection.

Which provider reports a counter: the one given to :meth:`SummedCounter.of`, else the SDK
provider that is global at that moment, else (the usual case) the process's global provider of
``configure()``, whatever pipeline stands behind it now: one observable instrument per scope and
name is registered there and follows every later configuration, so a counter made before
``telemetry.configure`` (a component built first) reports too. Its sums cover what was added
since the last pipeline behind that provider shut down (:func:`restart`); a provider of the
caller's own reports only its own counters.

Attribute values must be hashable (the strings and numbers the telemetry contract uses). The
number of distinct attribute sets is capped like the SDK's own cardinality limit (both are the
``metric_series_limit`` setting, applied at ``configure()``): beyond it, adds go to one overflow
series marked ``otel.metric.overflow``, and each one is counted in
``observatory.telemetry.series_overflow`` by metric name, so the folding is never silent.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from gpt_observatory.telemetry import _globals, names
from gpt_observatory.telemetry.names import Metric

__all__ = ["SummedCounter", "restart", "set_series_limit"]

_OVERFLOW_KEY = (("otel.metric.overflow", True),)
DEFAULT_MAX_SERIES = 20_000  # the default of the metric_series_limit setting
_series_limit = DEFAULT_MAX_SERIES
_SCOPE = "observatory.telemetry"

Key = tuple[str, str]  # (instrumentation scope, metric name)

_lock = threading.Lock()
_homed: weakref.WeakKeyDictionary[MeterProvider, dict[Key, SummedCounter]] = weakref.WeakKeyDictionary()


class SummedCounter:
    """``add(amount, attributes)`` like a counter (or an up-down counter, made with ``up_down=True``).

    Get one with :meth:`of`: all users of one scope and name under one provider share it, as the
    users of one synchronous counter share its aggregation.
    """

    __slots__ = ("_home", "_max_series", "_mutex", "_overflow_attrs", "_sums", "metric", "up_down")

    def __init__(self, metric: Metric, up_down: bool = False, max_series: int | None = None,
                 home: MeterProvider | None = None) -> None:
        self.metric = metric
        self.up_down = up_down
        self._sums: dict[tuple[tuple[str, Any], ...], float] = {}
        self._mutex = threading.Lock()
        self._max_series = max_series  # None: the configured metric_series_limit
        self._home = home  # where its overflow is counted (None: not counted)
        self._overflow_attrs = {names.TELEMETRY_METRIC: metric.name}

    @classmethod
    def of(cls, scope: str, metric: Metric, *, up_down: bool = False,
           provider: MeterProvider | None = None, max_series: int | None = None) -> SummedCounter:
        """The counter ``metric`` of instrumentation scope ``scope`` reported by ``provider``
        (default: the global SDK provider, else the global provider of ``configure()``).
        ``max_series`` (default: the ``metric_series_limit`` setting) applies when this call makes
        the counter."""
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider

        home = provider if provider is not None else metrics.get_meter_provider()
        if provider is None and not isinstance(home, SdkMeterProvider):
            home = _globals.meter_provider  # the API's proxy before configure(), or ours after
        key = (scope, metric.name)
        with _lock:
            counters = _homed.setdefault(home, {})
            counter = counters.get(key)
            made = counter is None
            if made:
                counter = counters[key] = cls(metric, up_down, max_series, home)
        if made:  # outside the lock: registering takes the provider's own locks
            meter = home.get_meter(scope)
            create = meter.create_observable_up_down_counter if up_down else meter.create_observable_counter
            create(metric.name, callbacks=[counter._observe], unit=metric.unit, description=metric.description)
        return counter

    def add(self, amount: float, attributes: Mapping[str, Any]) -> None:
        key = tuple(attributes.items())
        with self._mutex:
            sums = self._sums
            if key in sums:
                sums[key] += amount
                return
            if len(sums) < (self._max_series or _series_limit):
                sums[key] = amount
                return
            sums[_OVERFLOW_KEY] = sums.get(_OVERFLOW_KEY, 0) + amount
        if self._home is not None and self.metric is not names.TELEMETRY_SERIES_OVERFLOW:
            SummedCounter.of(_SCOPE, names.TELEMETRY_SERIES_OVERFLOW, provider=self._home).add(1, self._overflow_attrs)

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._mutex:
            items = list(self._sums.items())
        # One attribute set may have been added in two key orders: an observable instrument keeps
        # only the last observation of a set, so merge first.
        merged: dict[frozenset[tuple[str, Any]], list[Any]] = {}
        for attrs, amount in items:
            entry = merged.setdefault(frozenset(attrs), [attrs, 0])
            entry[1] += amount
        return [Observation(amount, dict(attrs)) for attrs, amount in merged.values()]

    def _clear(self) -> None:
        with self._mutex:
            self._sums.clear()


def set_series_limit(limit: int) -> None:
    """Distinct attribute sets each counter keeps from now on (``metric_series_limit``); what a
    counter holds already stays."""
    global _series_limit
    _series_limit = limit


def restart(provider: MeterProvider) -> None:
    """Start every counter that ``provider`` reports from zero (its pipeline has shut down: the
    next one reports only what is added from now on)."""
    with _lock:
        counters = list(_homed.get(provider, {}).values())
    for counter in counters:
        counter._clear()
