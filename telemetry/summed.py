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
provider that is global at that moment. A counter made while none is (a component built before
``telemetry.configure``) follows the global provider, as the API's proxy instruments do: every
provider :func:`attach` is called with (``configure`` calls it) reports it. One observable
instrument per name and provider reports all of them, because a meter keeps only the first
callback registered under a name.

Attribute values must be hashable (the strings and numbers the telemetry contract uses). The
number of distinct attribute sets is capped like the SDK's own cardinality limit: beyond it, adds
go to one overflow series marked ``otel.metric.overflow``.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from gpt_observatory.telemetry.names import Metric

__all__ = ["SummedCounter", "attach"]

_OVERFLOW_KEY = (("otel.metric.overflow", True),)
DEFAULT_MAX_SERIES = 2000  # the SDK's default cardinality limit per instrument

Key = tuple[str, str]  # (instrumentation scope, metric name)

_lock = threading.Lock()
_floating: dict[Key, SummedCounter] = {}  # made while no SDK provider was global
_homed: weakref.WeakKeyDictionary[MeterProvider, dict[Key, SummedCounter]] = weakref.WeakKeyDictionary()
_registered: weakref.WeakKeyDictionary[MeterProvider, set[Key]] = weakref.WeakKeyDictionary()


class SummedCounter:
    """``add(amount, attributes)`` like a counter (or an up-down counter, made with ``up_down=True``).

    Get one with :meth:`of`: all users of one scope and name under one provider share it, as the
    users of one synchronous counter share its aggregation.
    """

    __slots__ = ("_max_series", "_mutex", "_sums", "metric", "up_down")

    def __init__(self, metric: Metric, up_down: bool = False, max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.metric = metric
        self.up_down = up_down
        self._sums: dict[tuple[tuple[str, Any], ...], float] = {}
        self._mutex = threading.Lock()
        self._max_series = max_series

    @classmethod
    def of(cls, scope: str, metric: Metric, *, up_down: bool = False,
           provider: MeterProvider | None = None, max_series: int = DEFAULT_MAX_SERIES) -> SummedCounter:
        """The counter ``metric`` of instrumentation scope ``scope`` reported by ``provider``
        (default: the global SDK provider, or every provider configured later if none is yet).
        ``max_series`` applies when this call makes the counter."""
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider

        home = provider if provider is not None else metrics.get_meter_provider()
        key = (scope, metric.name)
        with _lock:
            if provider is None and not isinstance(home, SdkMeterProvider):
                return _floating.setdefault(key, cls(metric, up_down, max_series))
            counters = _homed.setdefault(home, {})
            counter = counters.get(key)
            if counter is None:
                counter = counters[key] = cls(metric, up_down, max_series)
            new = _claim(home, [(key, counter)])
        _register(home, new)  # outside the lock: a collection holds the SDK's lock while it calls us
        return counter

    def add(self, amount: float, attributes: Mapping[str, Any]) -> None:
        key = tuple(attributes.items())
        with self._mutex:
            sums = self._sums
            if key in sums:
                sums[key] += amount
            elif len(sums) < self._max_series:
                sums[key] = amount
            else:
                sums[_OVERFLOW_KEY] = sums.get(_OVERFLOW_KEY, 0) + amount

    def _items(self) -> list[tuple[tuple[tuple[str, Any], ...], float]]:
        with self._mutex:
            return list(self._sums.items())


def attach(provider: MeterProvider) -> None:
    """Have ``provider`` report every counter made so far without a provider of its own."""
    with _lock:
        new = _claim(provider, list(_floating.items()))
    _register(provider, new)


def _claim(provider: MeterProvider, counters: list[tuple[Key, SummedCounter]]) -> list[tuple[Key, SummedCounter]]:
    """Those of ``counters`` whose key is not yet registered on ``provider``, now marked registered
    (``_lock`` held)."""
    done = _registered.setdefault(provider, set())
    new = [(key, counter) for key, counter in counters if key not in done]
    done.update(key for key, _ in new)
    return new


def _register(provider: MeterProvider, new: list[tuple[Key, SummedCounter]]) -> None:
    """Create one observable instrument per claimed key on ``provider``."""
    ref = weakref.ref(provider)
    for key, counter in new:
        meter = provider.get_meter(key[0])
        create = meter.create_observable_up_down_counter if counter.up_down else meter.create_observable_counter
        metric = counter.metric
        create(metric.name, callbacks=[functools.partial(_observe, ref, key)], unit=metric.unit,
               description=metric.description)


def _observe(ref: weakref.ref[MeterProvider], key: Key, options: CallbackOptions) -> Iterable[Observation]:
    provider = ref()
    with _lock:
        counters = [c for c in (_floating.get(key), _homed.get(provider, {}).get(key) if provider else None) if c]
    # One attribute set may have been added in two key orders, or by both counters: an observable
    # instrument keeps only the last observation of a set, so merge first.
    merged: dict[frozenset[tuple[str, Any]], list[Any]] = {}
    for counter in counters:
        for attrs, amount in counter._items():
            entry = merged.setdefault(frozenset(attrs), [attrs, 0])
            entry[1] += amount
    return [Observation(amount, dict(attrs)) for attrs, amount in merged.values()]
