"""``memory``: keeps everything in process, for tests."""

from __future__ import annotations

from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from telemetry.settings import Settings


class MemorySpanExporter(InMemorySpanExporter):
    def __init__(self, settings: Settings | None = None):
        super().__init__()


class MemoryMetricReader(InMemoryMetricReader):
    def __init__(self, settings: Settings | None = None):
        super().__init__()


class MemoryLogExporter(InMemoryLogRecordExporter):
    def __init__(self, settings: Settings | None = None):
        super().__init__()
