"""``configure()``: build the tracer, meter and logger providers from settings and put them behind
the process's global ones (``_globals``: set once, swapped at each ``configure()``/``shutdown()``)."""

from __future__ import annotations

import atexit
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from opentelemetry import metrics, trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, ExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace import sampling as _sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from gpt_observatory.telemetry import __version__, _globals, backends, names, summed
from gpt_observatory.telemetry._health import (
    CountingLogProcessor,
    CountingSpanProcessor,
    GuardedLogExporter,
    GuardedMetricExporter,
    GuardedSpanExporter,
    HealthStats,
)
from gpt_observatory.telemetry._logs import LoguruBridge
from gpt_observatory.telemetry._shutdown import close_providers
from gpt_observatory.telemetry.backends.memory import MemoryLogExporter, MemoryMetricReader, MemorySpanExporter
from gpt_observatory.telemetry.redact import Redactor
from gpt_observatory.telemetry.settings import Settings, load


@dataclass
class MemoryView:
    """What the ``memory`` backend holds (tests)."""

    span_exporter: MemorySpanExporter | None = None
    metric_reader: MemoryMetricReader | None = None
    log_exporter: MemoryLogExporter | None = None

    def spans(self) -> list[Any]:
        return list(self.span_exporter.get_finished_spans()) if self.span_exporter else []

    def logs(self) -> list[Any]:
        return list(self.log_exporter.get_finished_logs()) if self.log_exporter else []

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> current data points (collected now)."""
        out: dict[str, list[Any]] = {}
        data = self.metric_reader.get_metrics_data() if self.metric_reader else None
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    out.setdefault(m.name, []).extend(m.data.data_points)
        return out


@dataclass
class Telemetry:
    """A configured telemetry pipeline. ``shutdown()`` flushes and closes it (also run at exit)."""

    settings: Settings
    resource: Resource
    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    logger_provider: LoggerProvider | None
    stats: HealthStats
    backends: dict[str, list[str]]
    memory: MemoryView = field(default_factory=MemoryView)
    readers: list[MetricReader] = field(default_factory=list)
    extras: list[Any] = field(default_factory=list)  # started helpers with .stop() (GPU collector)
    closed: bool = False
    _bridge: LoguruBridge | None = None
    _overrides: dict[str, Any] = field(default_factory=dict)

    def tracer(self, name: str) -> trace.Tracer:
        return trace.get_tracer(name, __version__, tracer_provider=self.tracer_provider)

    def meter(self, name: str) -> metrics.Meter:
        return metrics.get_meter(name, __version__, meter_provider=self.meter_provider)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        ok = True
        for provider in (self.tracer_provider, self.logger_provider, self.meter_provider):
            if provider is not None:
                ok = bool(provider.force_flush(timeout_millis)) and ok
        return ok

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Flush and close every provider, all at once, within ``timeout_s`` (default: the
        ``shutdown_timeout_s`` setting) whatever the exporters do: one still busy then is left behind."""
        global _current
        with _lock:
            if self.closed:
                return
            self.closed = True
            live = _current is self
            if live:  # what the global tracers and instruments record from now on goes nowhere
                _globals.swap(None, None, None)
            for extra in self.extras:
                extra.stop()
            if self._bridge:
                self._bridge.uninstall()
            budget = self.settings.shutdown_timeout_s if timeout_s is None else timeout_s
            late = close_providers(self.tracer_provider, self.logger_provider, self.meter_provider, budget)
            if late:  # the log sinks are gone by now: say it on stderr
                sys.stderr.write(
                    f"telemetry: {' and '.join(late)} did not finish shutting down within {budget:g} s "
                    "(an exporter is not answering); what they still held is lost\n"
                )
            if live:  # after the final collection above: the next pipeline counts afresh
                summed.restart(_globals.meter_provider)
                _current = None


_lock = threading.RLock()
_current: Telemetry | None = None
_atexit_registered = False


def current() -> Telemetry | None:
    """The live handle, if ``configure()`` was called and not shut down."""
    return _current


def configure(service_name: str | None = None, **overrides: Any) -> Telemetry:
    """Set up traces, metrics and logs from settings; return the handle.

    Idempotent: with no arguments, or the same ones, a live handle is returned as is;
    with different ones the live pipeline is flushed, shut down and replaced.
    A bad setting raises :class:`~telemetry.settings.ConfigError` naming the key.
    """
    global _current, _atexit_registered
    if service_name is not None:
        overrides["service_name"] = service_name
    with _lock:
        if _current is not None and not _current.closed and (not overrides or overrides == _current._overrides):
            return _current
        settings = load(**overrides)
        built = _build(settings)  # raises before anything global changes
        built._overrides = overrides
        if _current is not None:
            _current.shutdown()
        _install_globals(built)
        _current = built
        if not _atexit_registered:
            atexit.register(_shutdown_current)
            _atexit_registered = True
        logger.debug("telemetry configured: {}", built.backends)
        return built


def shutdown(timeout_s: float | None = None) -> None:
    """Flush and close the live pipeline, if any, within ``timeout_s`` (see :meth:`Telemetry.shutdown`).
    Counts kept for the global providers start from zero either way: the next ``configure()``
    reports only what happens after this."""
    _shutdown_current(timeout_s)
    summed.restart(_globals.meter_provider)


def _shutdown_current(timeout_s: float | None = None) -> None:
    handle = _current
    if handle is not None:
        handle.shutdown(timeout_s)


def _resource(settings: Settings) -> Resource:
    attrs: dict[str, Any] = {
        names.SERVICE_NAME: settings.service_name,
        names.DEPLOYMENT_ENVIRONMENT: settings.environment,
        names.HOST_NAME: socket.gethostname(),
    }
    if settings.service_version:
        attrs[names.SERVICE_VERSION] = settings.service_version
    return Resource.create({**attrs, **settings.resource_attributes, names.SERVICE_NAME: settings.service_name})


def _sampler(settings: Settings) -> _sampling.Sampler:
    ratio = _sampling.TraceIdRatioBased(settings.sampler_arg)
    return {
        "always_on": _sampling.ALWAYS_ON,
        "always_off": _sampling.ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": _sampling.ParentBased(_sampling.ALWAYS_ON),
        "parentbased_always_off": _sampling.ParentBased(_sampling.ALWAYS_OFF),
        "parentbased_traceidratio": _sampling.ParentBased(ratio),
    }[settings.sampler]


def _build(settings: Settings) -> Telemetry:
    resource = _resource(settings)
    stats = HealthStats()
    redactor = Redactor(settings.redact_extra_keys)
    chosen = {s: settings.exporters(s) for s in ("traces", "metrics", "logs")}
    memory = MemoryView()
    batch = {
        "max_queue_size": settings.max_queue_size,
        "schedule_delay_millis": settings.schedule_delay_ms,
        "max_export_batch_size": min(settings.max_export_batch_size, settings.max_queue_size),
    }
    created: list[Any] = []
    try:
        tracer_provider = None
        if chosen["traces"]:
            tracer_provider = TracerProvider(resource=resource, sampler=_sampler(settings), shutdown_on_exit=False)
            for name in chosen["traces"]:
                exporter = backends.build("traces", name, settings)
                created.append(exporter)
                _count_drops(exporter, "traces", name, stats)
                if isinstance(exporter, MemorySpanExporter):
                    memory.span_exporter = exporter
                guarded = GuardedSpanExporter(exporter, name, stats, redactor)
                # memory is for tests: synchronous, so a span is readable as soon as it ends
                tracer_provider.add_span_processor(
                    SimpleSpanProcessor(guarded)
                    if isinstance(exporter, MemorySpanExporter)
                    else CountingSpanProcessor(guarded, stats, **batch)
                )

        logger_provider = None
        if chosen["logs"]:
            logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
            for name in chosen["logs"]:
                exporter = backends.build("logs", name, settings)
                created.append(exporter)
                _count_drops(exporter, "logs", name, stats)
                if isinstance(exporter, MemoryLogExporter):
                    memory.log_exporter = exporter
                guarded_log = GuardedLogExporter(exporter, name, stats, redactor)
                logger_provider.add_log_record_processor(
                    SimpleLogRecordProcessor(guarded_log)
                    if isinstance(exporter, MemoryLogExporter)
                    else CountingLogProcessor(guarded_log, stats, **batch)
                )

        readers: list[MetricReader] = []
        for name in chosen["metrics"]:
            made = backends.build("metrics", name, settings)
            created.append(made)
            _count_drops(made, "metrics", name, stats)
            if isinstance(made, MetricExporter):
                made = PeriodicExportingMetricReader(
                    GuardedMetricExporter(made, name, stats, redactor),
                    export_interval_millis=settings.metric_export_interval_ms,
                )
            else:  # a pull or push reader of ours masks what it receives, and may report push outcomes
                if hasattr(made, "redactor"):
                    made.redactor = redactor
                if hasattr(made, "on_result"):
                    made.on_result = lambda ok, n, _name=name: stats.count_export("metrics", _name, ok, n)
            if isinstance(made, MemoryMetricReader):
                memory.metric_reader = made
            readers.append(made)
    except Exception:
        for obj in created:
            try:
                obj.shutdown()
            except Exception as e:  # best effort while unwinding a failed configure
                logger.debug("cleanup after failed configure: {}", e)
        raise
    meter_provider = None
    if readers:
        meter_provider = MeterProvider(
            resource=resource, metric_readers=readers, exemplar_filter=_exemplar_filter(chosen["metrics"]),
            # Every instrument keeps metric_series_limit attribute sets (the SDK's default is 2,000).
            views=[View(instrument_name="*", aggregation_cardinality_limit=settings.metric_series_limit)],
            shutdown_on_exit=False,  # our atexit shuts all three down together, within a deadline
        )

    console = settings.console_logs if settings.console_logs is not None else not settings.logs_exporter
    handle = Telemetry(
        settings=settings,
        resource=resource,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=logger_provider,
        stats=stats,
        backends=chosen,
        memory=memory,
        readers=readers,
    )
    handle._bridge = LoguruBridge(settings, logger_provider, redactor, console)
    if meter_provider is not None:
        stats.register(meter_provider.get_meter("observatory.telemetry", __version__))
    return handle


def _count_drops(backend: Any, signal: str, name: str, stats: HealthStats) -> None:
    """A backend with an ``on_drop`` hook (``jsonl``) reports the items it could not write."""
    if hasattr(backend, "on_drop"):
        backend.on_drop = lambda n, reason: stats.count_drop(signal, name, n, reason)


# Metric backends of ours that drop exemplars (the Prometheus text format of the pull reader and
# the Pushgateway, JSON lines, the console, the in-memory view): sampling them costs every
# measurement taken inside a sampled span a reservoir offer (a few µs) for nothing.
_NO_EXEMPLARS = frozenset({"jsonl", "prometheus", "pushgateway", "console", "memory"})


def _exemplar_filter(metric_backends: list[str]) -> ExemplarFilter | None:
    """Exemplars off when no chosen backend exports them; else the SDK's choice
    (``OTEL_METRICS_EXEMPLAR_FILTER``, default ``trace_based``)."""
    return AlwaysOffExemplarFilter() if set(metric_backends) <= _NO_EXEMPLARS else None


def _install_globals(handle: Telemetry) -> None:
    taken = _globals.install()
    if taken:
        logger.warning(
            "other code set the global OpenTelemetry provider for {} before telemetry.configure(); "
            "OpenTelemetry keeps the first one, so what uses the global API does not reach this "
            "pipeline: call telemetry.configure() before that code runs",
            ", ".join(taken),
        )
    _globals.swap(handle.tracer_provider, handle.meter_provider, handle.logger_provider)
    summed.set_series_limit(handle.settings.metric_series_limit)
    if handle._bridge is not None:
        handle._bridge.install()
    _start_gpu(handle)


def _start_gpu(handle: Telemetry) -> None:
    """The NVML collector, when metrics are on and it is enabled (it logs once if there is no GPU)."""
    if handle.meter_provider is None or not handle.settings.gpu_enabled:
        return
    from gpt_observatory.telemetry import gpu  # imported here: NVML is touched only when telemetry is configured

    collector = gpu.start_from_settings(handle.settings, handle.meter_provider)
    if collector is not None:
        handle.extras.append(collector)
