"""``memory``: keeps everything in process, for tests."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from telemetry.redact import DEFAULT
from telemetry.settings import Settings


class MemorySpanExporter(InMemorySpanExporter):
    def __init__(self, settings: Settings | None = None):
        super().__init__()


class MemoryMetricReader(InMemoryMetricReader):
    def __init__(self, settings: Settings | None = None):
        super().__init__()
        self.redactor = DEFAULT  # configure() sets the configured one

    def _receive_metrics(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        if metrics_data is not None:
            self.redactor.metrics_data(metrics_data)
        super()._receive_metrics(metrics_data, timeout_millis, **kwargs)


class MemoryLogExporter(InMemoryLogRecordExporter):
    def __init__(self, settings: Settings | None = None):
        super().__init__()
