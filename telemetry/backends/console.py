"""``console``: human-readable output on stdout, for development (the OTel SDK's console exporters,
registered under our names; they take no settings)."""

from __future__ import annotations

from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter as _SdkConsoleMetricExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter as _SdkConsoleSpanExporter


class ConsoleSpanExporter(_SdkConsoleSpanExporter):
    """Spans as JSON on stdout."""


class ConsoleMetricExporter(_SdkConsoleMetricExporter):
    """Metric batches as JSON on stdout."""


class ConsoleLogExporter(ConsoleLogRecordExporter):
    """Log records as JSON on stdout."""
