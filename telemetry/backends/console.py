"""``console``: human-readable output on stdout, for development."""

from __future__ import annotations

from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter as _SdkConsoleMetricExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter as _SdkConsoleSpanExporter

from telemetry.settings import Settings


class ConsoleSpanExporter(_SdkConsoleSpanExporter):
    def __init__(self, settings: Settings | None = None):
        super().__init__()


class ConsoleMetricExporter(_SdkConsoleMetricExporter):
    def __init__(self, settings: Settings | None = None):
        super().__init__()


class ConsoleLogExporter(ConsoleLogRecordExporter):
    def __init__(self, settings: Settings | None = None):
        super().__init__()
