"""``jsonl``: one JSON object per line in ``<state>/telemetry/{traces,metrics,logs}.jsonl``,
rotated by size. The embedded default backend.

A record that cannot be written (a full disk) is dropped whole, never torn
(:class:`~gpt_observatory.telemetry.backends._files.RotatingFile`): the export reports failure and
the number dropped goes to ``on_drop`` (set by ``configure()``: the ``write_failed`` drop count)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import (
    Histogram,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    Sum,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from gpt_observatory.telemetry.backends._base import SettingsBackend
from gpt_observatory.telemetry.backends._files import RotatingFile
from gpt_observatory.telemetry.settings import Settings, load


def telemetry_dir(settings: Settings) -> Path:
    return Path(os.environ.get("OBSERVATORY_STATE_DIR") or settings.state_dir).resolve() / "telemetry"


def _dumps(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj, default=str, option=orjson.OPT_APPEND_NEWLINE)


_resource_cache: dict[int, tuple[Any, orjson.Fragment]] = {}


def _resource_json(resource: Any) -> orjson.Fragment:
    """A resource serialised once (it is the same object on every span of a provider)."""
    hit = _resource_cache.get(id(resource))
    if hit is None or hit[0] is not resource:
        if len(_resource_cache) > 64:
            _resource_cache.clear()
        hit = (resource, orjson.Fragment(orjson.dumps(dict(resource.attributes), default=str)))
        _resource_cache[id(resource)] = hit
    return hit[1]


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _plain(attrs: Any) -> dict[str, Any]:
    """A dict orjson serialises natively (the SDK's BoundedAttributes wraps one)."""
    if not attrs:
        return {}
    inner = getattr(attrs, "_dict", None)
    return inner if isinstance(inner, dict) else dict(attrs)


def span_record(span: ReadableSpan) -> dict[str, Any]:
    ctx = span._context
    parent = span._parent
    status = span._status
    events, links, scope = span._events, span._links, span._instrumentation_scope
    # ReadableSpan's public properties copy their containers on each access; this runs once per
    # exported span on the export thread, so it reads the fields directly.
    return {
        "trace_id": _hex(ctx.trace_id, 32),
        "span_id": _hex(ctx.span_id, 16),
        "parent_span_id": _hex(parent.span_id, 16) if parent else None,
        "name": span._name,
        "kind": span._kind.name,
        "start_time_unix_nano": span._start_time,
        "end_time_unix_nano": span._end_time,
        "status": {"code": status.status_code.name, "description": status.description},
        "attributes": _plain(span._attributes),
        "events": [
            {"name": e.name, "time_unix_nano": e.timestamp, "attributes": dict(e.attributes or {})} for e in events
        ]
        if events
        else [],
        "links": [{"trace_id": _hex(ln.context.trace_id, 32), "span_id": _hex(ln.context.span_id, 16)} for ln in links]
        if links
        else [],
        "scope": scope.name if scope else None,
        "resource": _resource_json(span._resource),
    }


class _JsonlBase(SettingsBackend):
    signal = ""

    def __init__(self, settings: Settings | None = None):
        settings = settings or load()
        self.file = RotatingFile(
            telemetry_dir(settings) / f"{self.signal}.jsonl", settings.jsonl_max_bytes, settings.jsonl_backups
        )
        self.on_drop: Callable[[int, str], None] | None = None  # (how many, reason)

    @property
    def path(self) -> Path:
        return self.file.path

    def _write(self, lines: list[bytes]) -> bool:
        """Append the records; ``False`` when some were dropped (reported to ``on_drop``)."""
        dropped = self.file.write_lines(lines)
        if dropped and self.on_drop is not None:
            self.on_drop(dropped, "write_failed")
        return not dropped


class JsonlSpanExporter(_JsonlBase, SpanExporter):
    signal = "traces"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ok = self._write([_dumps(span_record(s)) for s in spans])
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.file.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class JsonlLogExporter(_JsonlBase, LogRecordExporter):
    signal = "logs"

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        lines = []
        for rec in batch:
            lr = rec.log_record
            lines.append(
                _dumps(
                    {
                        "time_unix_nano": lr.timestamp,
                        "severity_text": lr.severity_text,
                        "severity_number": lr.severity_number.value if lr.severity_number else None,
                        "body": lr.body,
                        "attributes": dict(lr.attributes or {}),
                        "trace_id": _hex(lr.trace_id, 32) if lr.trace_id else None,
                        "span_id": _hex(lr.span_id, 16) if lr.span_id else None,
                        "scope": rec.instrumentation_scope.name if rec.instrumentation_scope else None,
                        "resource": dict(rec.resource.attributes),
                    }
                )
            )
        return LogRecordExportResult.SUCCESS if self._write(lines) else LogRecordExportResult.FAILURE

    def shutdown(self) -> None:
        self.file.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _point(data: Any, p: Any) -> dict[str, Any]:
    if isinstance(data, Histogram):
        return {
            "count": p.count,
            "sum": p.sum,
            "min": p.min,
            "max": p.max,
            "bucket_counts": list(p.bucket_counts),
            "explicit_bounds": list(p.explicit_bounds),
        }
    if hasattr(p, "value"):
        return {"value": p.value}
    return {"unsupported": type(p).__name__}


class JsonlMetricExporter(_JsonlBase, MetricExporter):
    signal = "metrics"

    def __init__(self, settings: Settings | None = None):
        _JsonlBase.__init__(self, settings)
        MetricExporter.__init__(self)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        lines = []
        for rm in metrics_data.resource_metrics:
            service = rm.resource.attributes.get("service.name")
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = type(m.data).__name__.lower()
                    monotonic = m.data.is_monotonic if isinstance(m.data, Sum) else None
                    for p in m.data.data_points:
                        lines.append(
                            _dumps(
                                {
                                    "time_unix_nano": p.time_unix_nano,
                                    "name": m.name,
                                    "unit": m.unit,
                                    "type": kind,
                                    "monotonic": monotonic,
                                    "attributes": dict(p.attributes or {}),
                                    **_point(m.data, p),
                                    "scope": sm.scope.name,
                                    "service.name": service,
                                }
                            )
                        )
        return MetricExportResult.SUCCESS if self._write(lines) else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.file.close()
