"""``memory``: keeps everything in process, for tests (takes no settings)."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gpt_observatory.telemetry.redact import DEFAULT


class MemorySpanExporter(InMemorySpanExporter):
    """Finished spans, kept until cleared."""


class MemoryMetricReader(InMemoryMetricReader):
    """Metrics read on demand, redacted like every other backend's."""

    def __init__(self) -> None:
        super().__init__()
        self.redactor = DEFAULT  # configure() sets the configured one

    def _receive_metrics(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        if metrics_data is not None:
            self.redactor.metrics_data(metrics_data)
        super()._receive_metrics(metrics_data, timeout_millis, **kwargs)


class MemoryLogExporter(InMemoryLogRecordExporter):
    """Emitted log records, kept until cleared."""
