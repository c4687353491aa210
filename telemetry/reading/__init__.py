"""Reading what the telemetry backends wrote: our ``jsonl`` files or an OpenTelemetry Collector's
``file`` exporter output, as plain log and span records."""

from __future__ import annotations

from gpt_observatory.telemetry.reading.files import ReadStats, default_source, read_logs, read_spans, signal_files
from gpt_observatory.telemetry.reading.records import LogEntry, SpanEntry, parse_logs, parse_spans

__all__ = [
    "LogEntry",
    "ReadStats",
    "SpanEntry",
    "default_source",
    "parse_logs",
    "parse_spans",
    "read_logs",
    "read_spans",
    "signal_files",
]
