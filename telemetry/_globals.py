"""The process's global tracer, meter and logger providers: set once, swapped behind.

OpenTelemetry's API lets a process set each global provider once (a second ``set_*_provider``
is refused). :func:`install` sets the three providers of this module the first time
``configure()`` runs; from then on :func:`swap` only changes the SDK providers behind them
(``None``: nothing, so everything is a no-op).

Every tracer, meter, instrument and logger they hand out delegates to one made by the provider
now behind them, re-made at each swap. So what a module took before the first ``configure()``
(through the API's own proxies, which resolve to these), or under an earlier configuration,
reports to the pipeline configured now. Observable instruments are created again on each new
provider with the same callbacks. They are kept per instrumentation scope and per instrument
identity, as the SDK keeps its own, so asking again returns the same object and nothing grows.

The request path pays one attribute read and one call per span start or measurement: the object
to delegate to is set on the proxy at the swap, so no lock, lookup or check runs per call.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry import _logs, metrics, trace
from opentelemetry.metrics import (
    CallbackT,
    Counter,
    Histogram,
    Meter,
    NoOpMeter,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.metrics import _Gauge as Gauge
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.util.types import Attributes

__all__ = ["GlobalLoggerProvider", "GlobalMeterProvider", "GlobalTracerProvider", "install", "swap"]

_lock = threading.RLock()  # provider-level: swaps and new proxies; per call nothing is locked


class _Behind:
    """What the three providers share: one proxy per instrumentation scope (as the SDK keeps one
    tracer or meter per scope), each bound to the SDK provider now ``behind``."""

    def __init__(self) -> None:
        self.behind: Any = None
        self._proxies: dict[InstrumentationScope, Any] = {}

    def _proxy(self, make: type, name: str, version: str | None, schema_url: str | None, attributes: Attributes) -> Any:
        scope = InstrumentationScope(name, version, schema_url, attributes)
        with _lock:
            proxy = self._proxies.get(scope)
            if proxy is None:
                proxy = self._proxies[scope] = make(scope)
                proxy._bind(self.behind)
            return proxy

    def _swap(self, provider: Any) -> None:
        self.behind = provider
        for proxy in self._proxies.values():
            proxy._bind(provider)


# --------------------------------------------------------------------------------------------- traces
class _Tracer(trace.Tracer):
    def __init__(self, scope: InstrumentationScope) -> None:
        self._scope = scope
        self._tracer: trace.Tracer = trace.NoOpTracer()

    def _bind(self, provider: trace.TracerProvider | None) -> None:
        s = self._scope
        if provider is None:
            self._tracer = trace.NoOpTracer()
        else:
            self._tracer = provider.get_tracer(s.name, s.version, s.schema_url, s.attributes)

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._tracer.start_span(*args, **kwargs)

    # The real tracer's own context manager (which also works as a decorator), not one wrapped in ours.
    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._tracer.start_as_current_span(*args, **kwargs)


class GlobalTracerProvider(_Behind, trace.TracerProvider):
    """Hands out tracers that follow whatever SDK tracer provider :func:`swap` put behind it."""

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> trace.Tracer:
        return self._proxy(_Tracer, instrumenting_module_name, instrumenting_library_version, schema_url, attributes)


# -------------------------------------------------------------------------------------------- metrics
class _Instrument:
    """A proxy instrument: ``_real`` is the instrument of the meter now behind (re-made at each swap)."""

    _create = ""  # the Meter method that makes the real one

    def __init__(self, name: str, unit: str = "", description: str = "", **extra: Any) -> None:
        self._how = (name, unit, description, extra)
        self._real: Any = None

    def _bind(self, meter: Meter) -> None:
        name, unit, description, extra = self._how
        self._real = getattr(meter, self._create)(name, unit=unit, description=description, **extra)


class _Counter(_Instrument, Counter):
    _create = "create_counter"

    def add(self, amount: float, attributes: Attributes = None, context: Any = None) -> None:
        self._real.add(amount, attributes, context)


class _UpDownCounter(_Instrument, UpDownCounter):
    _create = "create_up_down_counter"

    def add(self, amount: float, attributes: Attributes = None, context: Any = None) -> None:
        self._real.add(amount, attributes, context)


class _Histogram(_Instrument, Histogram):
    _create = "create_histogram"

    def record(self, amount: float, attributes: Attributes = None, context: Any = None) -> None:
        self._real.record(amount, attributes, context)


class _Gauge(_Instrument, Gauge):
    _create = "create_gauge"

    def set(self, amount: float, attributes: Attributes = None, context: Any = None) -> None:
        self._real.set(amount, attributes, context)


# Observable instruments have nothing to delegate: binding registers their callbacks on the new meter.
class _ObservableCounter(_Instrument, ObservableCounter):
    _create = "create_observable_counter"


class _ObservableUpDownCounter(_Instrument, ObservableUpDownCounter):
    _create = "create_observable_up_down_counter"


class _ObservableGauge(_Instrument, ObservableGauge):
    _create = "create_observable_gauge"


class _Meter(Meter):
    def __init__(self, scope: InstrumentationScope) -> None:
        super().__init__(scope.name, scope.version, scope.schema_url)
        self._scope = scope
        self._meter: Meter = NoOpMeter(scope.name, scope.version, scope.schema_url)
        self._instruments: dict[tuple[str, str, str, str], _Instrument] = {}

    def _bind(self, provider: metrics.MeterProvider | None) -> None:
        s = self._scope
        if provider is None:
            self._meter = NoOpMeter(s.name, s.version, s.schema_url)
        else:
            self._meter = provider.get_meter(s.name, s.version, s.schema_url, s.attributes)
        for instrument in self._instruments.values():
            instrument._bind(self._meter)

    def _get(self, kind: type[_Instrument], name: str, unit: str, description: str, **extra: Any) -> Any:
        # One proxy per identity, as the SDK keeps one instrument per identity (the first
        # callbacks and advice win there too).
        key = (kind._create, name.strip().lower(), unit, description)
        with _lock:
            instrument = self._instruments.get(key)
            if instrument is None:
                instrument = self._instruments[key] = kind(name, unit, description, **extra)
                instrument._bind(self._meter)
            return instrument

    def create_counter(self, name: str, unit: str = "", description: str = "") -> Counter:
        return self._get(_Counter, name, unit, description)

    def create_up_down_counter(self, name: str, unit: str = "", description: str = "") -> UpDownCounter:
        return self._get(_UpDownCounter, name, unit, description)

    def create_histogram(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        *,
        explicit_bucket_boundaries_advisory: Sequence[float] | None = None,
    ) -> Histogram:
        return self._get(_Histogram, name, unit, description,
                         explicit_bucket_boundaries_advisory=explicit_bucket_boundaries_advisory)

    def create_gauge(self, name: str, unit: str = "", description: str = "") -> Gauge:
        return self._get(_Gauge, name, unit, description)

    def create_observable_counter(
        self, name: str, callbacks: Sequence[CallbackT] | None = None, unit: str = "", description: str = ""
    ) -> ObservableCounter:
        return self._get(_ObservableCounter, name, unit, description, callbacks=callbacks)

    def create_observable_up_down_counter(
        self, name: str, callbacks: Sequence[CallbackT] | None = None, unit: str = "", description: str = ""
    ) -> ObservableUpDownCounter:
        return self._get(_ObservableUpDownCounter, name, unit, description, callbacks=callbacks)

    def create_observable_gauge(
        self, name: str, callbacks: Sequence[CallbackT] | None = None, unit: str = "", description: str = ""
    ) -> ObservableGauge:
        return self._get(_ObservableGauge, name, unit, description, callbacks=callbacks)


class GlobalMeterProvider(_Behind, metrics.MeterProvider):
    """Hands out meters whose instruments follow whatever SDK meter provider :func:`swap` put behind it."""

    def get_meter(
        self, name: str, version: str | None = None, schema_url: str | None = None, attributes: Attributes = None
    ) -> Meter:
        return self._proxy(_Meter, name, version, schema_url, attributes)


# ----------------------------------------------------------------------------------------------- logs
class _Logger(_logs.Logger):
    def __init__(self, scope: InstrumentationScope) -> None:
        super().__init__(scope.name, scope.version, scope.schema_url, scope.attributes)
        self._scope = scope
        self._logger: _logs.Logger = _logs.NoOpLogger(scope.name)

    def _bind(self, provider: _logs.LoggerProvider | None) -> None:
        s = self._scope
        if provider is None:
            self._logger = _logs.NoOpLogger(s.name)
        else:
            self._logger = provider.get_logger(s.name, s.version, s.schema_url, s.attributes)

    def emit(self, record: Any = None, **fields: Any) -> None:
        self._logger.emit(record, **fields)

    def enabled(self, **kwargs: Any) -> bool:
        return self._logger.enabled(**kwargs)


class GlobalLoggerProvider(_Behind, _logs.LoggerProvider):
    """Hands out loggers that follow whatever SDK logger provider :func:`swap` put behind it."""

    def get_logger(
        self, name: str, version: str | None = None, schema_url: str | None = None, attributes: Attributes = None
    ) -> _logs.Logger:
        return self._proxy(_Logger, name, version, schema_url, attributes)


# ------------------------------------------------------------------------------------------ the three
tracer_provider = GlobalTracerProvider()
meter_provider = GlobalMeterProvider()
logger_provider = GlobalLoggerProvider()
_installed = False


def install() -> list[str]:
    """Make this module's providers the process's global ones; only the first call does anything.
    It returns the signals whose global provider other code had already set, which OpenTelemetry
    then keeps: what takes its tracers or meters from the global API does not follow :func:`swap`."""
    global _installed
    with _lock:
        if _installed:
            return []
        _installed = True
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
        _logs.set_logger_provider(logger_provider)
    taken = []
    for signal, current, ours in (
        ("traces", trace.get_tracer_provider(), tracer_provider),
        ("metrics", metrics.get_meter_provider(), meter_provider),
        ("logs", _logs.get_logger_provider(), logger_provider),
    ):
        if current is not ours:
            taken.append(f"{signal} ({type(current).__module__}.{type(current).__qualname__})")
    return taken


def swap(
    tracers: trace.TracerProvider | None,
    meters: metrics.MeterProvider | None,
    loggers: _logs.LoggerProvider | None,
) -> None:
    """Put these SDK providers behind the global ones (``None``: nothing, every call a no-op)."""
    with _lock:
        tracer_provider._swap(tracers)
        meter_provider._swap(meters)
        logger_provider._swap(loggers)
