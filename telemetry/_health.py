"""Export health: every exporter is wrapped to mask credentials and count what it exported,
what failed, and what was dropped (the batch queue full, or a backend that could not write), per
signal and backend. The counts are published as ``observatory.telemetry.exported`` / ``.dropped``
through the metrics pipeline."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.redact import Redactor


class HealthStats:
    """Thread-safe tallies keyed by (signal, backend, outcome)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.exported: Counter[tuple[str, str, str]] = Counter()
        self.dropped: Counter[tuple[str, str, str]] = Counter()  # (signal, backend, reason)

    def count_export(self, signal: str, backend: str, ok: bool, n: int) -> None:
        with self._lock:
            self.exported[(signal, backend, "success" if ok else "failure")] += n

    def count_drop(self, signal: str, backend: str, n: int = 1, reason: str = "queue_full") -> None:
        """``reason``: ``queue_full`` (the batch queue) or ``write_failed`` (a backend could not write them)."""
        with self._lock:
            self.dropped[(signal, backend, reason)] += n

    def failures(self, signal: str | None = None) -> int:
        return sum(v for (s, _, o), v in self.exported.items() if o == "failure" and signal in (None, s))

    def drops(self, signal: str | None = None) -> int:
        return sum(v for (s, _, _), v in self.dropped.items() if signal in (None, s))

    def register(self, meter: Meter) -> None:
        def exported(_: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                items = list(self.exported.items())
            for (signal, backend, outcome), value in items:
                yield Observation(
                    value,
                    {names.TELEMETRY_SIGNAL: signal, names.TELEMETRY_BACKEND: backend, names.TELEMETRY_OUTCOME: outcome},
                )

        def dropped(_: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                items = list(self.dropped.items())
            # Always report the zero series so alerts and dashboards have something to evaluate.
            if not items:
                yield Observation(0, {names.TELEMETRY_SIGNAL: "traces", names.TELEMETRY_BACKEND: "none",
                                      names.TELEMETRY_DROP_REASON: "queue_full"})
            for (signal, backend, reason), value in items:
                yield Observation(value, {names.TELEMETRY_SIGNAL: signal, names.TELEMETRY_BACKEND: backend,
                                          names.TELEMETRY_DROP_REASON: reason})

        for metric, cb in ((names.TELEMETRY_EXPORTED, exported), (names.TELEMETRY_DROPPED, dropped)):
            meter.create_observable_counter(metric.name, [cb], unit=metric.unit, description=metric.description)


class GuardedSpanExporter(SpanExporter):
    """Masks credentials, then exports; counts items by outcome. Never raises."""

    def __init__(self, inner: SpanExporter, backend: str, stats: HealthStats, redactor: Redactor):
        self.inner, self.backend, self._stats, self._redactor = inner, backend, stats, redactor

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export([self._redact(s) for s in spans])
        except Exception:  # the export boundary: a failing backend counts, it never propagates
            result = SpanExportResult.FAILURE
        self._stats.count_export("traces", self.backend, result is SpanExportResult.SUCCESS, len(spans))
        return result

    def _redact(self, span: ReadableSpan) -> ReadableSpan:
        # Runs for every exported span on the export thread: read the SDK's fields directly, since
        # its public properties copy their containers on each access, and copy only what changes.
        r = self._redactor
        attrs = r.attributes(span._attributes)
        events = span._events
        new_events = None
        if events:
            masked = [r.attributes(e.attributes) for e in events]
            if any(m is not e.attributes for m, e in zip(masked, events, strict=True)):
                new_events = [Event(e.name, m, e.timestamp) for m, e in zip(masked, events, strict=True)]
        desc = span._status.description
        new_desc = r.text(desc) if desc else desc
        if attrs is span._attributes and new_events is None and new_desc == desc:
            return span
        return ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=attrs,
            events=new_events if new_events is not None else events,
            links=span.links,
            kind=span.kind,
            status=Status(span.status.status_code, new_desc),
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class GuardedLogExporter(LogRecordExporter):
    def __init__(self, inner: LogRecordExporter, backend: str, stats: HealthStats, redactor: Redactor):
        self.inner, self.backend, self._stats, self._redactor = inner, backend, stats, redactor

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        try:
            result = self.inner.export([self._redact(r) for r in batch])
        except Exception:  # export boundary
            result = LogRecordExportResult.FAILURE
        self._stats.count_export("logs", self.backend, result is LogRecordExportResult.SUCCESS, len(batch))
        return result

    def _redact(self, record: ReadableLogRecord) -> ReadableLogRecord:
        lr = record.log_record
        body = self._redactor.text(lr.body) if isinstance(lr.body, str) else lr.body
        attrs = self._redactor.attributes(lr.attributes)
        if body is lr.body and attrs is lr.attributes:
            return record
        if body != lr.body:
            lr.body = body
        if attrs is not lr.attributes:
            lr.attributes = attrs
        return record

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class GuardedMetricExporter(MetricExporter):
    """Counts exported data points by outcome; masks credential-shaped attribute values."""

    def __init__(self, inner: MetricExporter, backend: str, stats: HealthStats, redactor: Redactor):
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner, self.backend, self._stats, self._redactor = inner, backend, stats, redactor

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        points = sum(
            len(m.data.data_points) for rm in metrics_data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        )
        try:
            result = self.inner.export(self._redactor.metrics_data(metrics_data), timeout_millis=timeout_millis)
        except Exception:  # export boundary
            result = MetricExportResult.FAILURE
        self._stats.count_export("metrics", self.backend, result is MetricExportResult.SUCCESS, points)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis)


def _queue_full(processor: BatchSpanProcessor | BatchLogRecordProcessor) -> bool:
    # The SDK keeps its queue private and only logs drops; we count them per backend.
    bp = processor._batch_processor
    return len(bp._queue) >= bp._max_queue_size


class CountingSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor (bounded queue, background export) that counts drops."""

    def __init__(self, exporter: GuardedSpanExporter, stats: HealthStats, **kwargs: Any):
        super().__init__(exporter, **kwargs)
        self._backend, self._stats = exporter.backend, stats

    def on_end(self, span: ReadableSpan) -> None:
        # A full queue drops the newest item here, counted, instead of the SDK's logged drop of the oldest:
        # during an outage the request path then pays one length check per span and nothing more.
        if span.context and span.context.trace_flags.sampled and _queue_full(self):
            self._stats.count_drop("traces", self._backend)
            return
        super().on_end(span)


class CountingLogProcessor(BatchLogRecordProcessor):
    def __init__(self, exporter: GuardedLogExporter, stats: HealthStats, **kwargs: Any):
        super().__init__(exporter, **kwargs)
        self._backend, self._stats = exporter.backend, stats

    def on_emit(self, log_record: Any) -> None:
        if _queue_full(self):
            self._stats.count_drop("logs", self._backend)
            return
        super().on_emit(log_record)


__all__ = [
    "CountingLogProcessor",
    "CountingSpanProcessor",
    "GuardedLogExporter",
    "GuardedMetricExporter",
    "GuardedSpanExporter",
    "HealthStats",
]
