"""Log and span records as plain dataclasses, parsed from one line of either file format we read.

Two formats, told apart by their keys:

- ours: the ``jsonl`` backend's lines (``telemetry/backends/jsonl.py``), one record a line;
- OTLP JSON as the OpenTelemetry Collector's ``file`` exporter writes it (``format: json``, the
  default; followed here as of opentelemetry-collector-contrib v0.133.0): one
  ``ExportLogsServiceRequest`` / ``ExportTraceServiceRequest`` a line, so one line holds many records.
  Per the OTLP/JSON mapping, ids are hex strings, 64-bit integers are decimal strings, and enums may
  be integers or their names (``"SPAN_KIND_SERVER"``, ``"STATUS_CODE_ERROR"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class LogEntry:
    time_ns: int
    service: str  # resource service.name ("" if none)
    level: str  # upper-case severity text; from severity_number when the text is missing
    severity: int | None
    message: str
    trace_id: str | None  # 32 hex, None when absent or all zeros
    span_id: str | None  # 16 hex
    attributes: dict[str, Any]
    resource: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SpanEntry:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str  # "SERVER", "CLIENT", "INTERNAL", ...
    start_ns: int
    end_ns: int
    status: str  # "UNSET" | "OK" | "ERROR"
    status_message: str | None
    attributes: dict[str, Any]
    events: list[dict[str, Any]]
    service: str
    scope: str | None
    resource: dict[str, Any]


# OTel's severity number ranges (logs data model): 1-4 TRACE ... 21-24 FATAL.
_SEVERITY_NAMES = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
_SPAN_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_STATUS_CODES = ("UNSET", "OK", "ERROR")


def level_name(severity: int | None) -> str:
    """The short OTel level name of a severity number ("" when unknown)."""
    if not severity or severity < 1:
        return ""
    return _SEVERITY_NAMES[min((severity - 1) // 4, 5)]


def _load(line: bytes) -> dict[str, Any] | None:
    if not line.strip():
        return None
    obj = orjson.loads(line)  # orjson.JSONDecodeError is a ValueError
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _id(value: Any) -> str | None:
    if not value or not isinstance(value, str) or not value.strip("0"):
        return None
    return value.lower()


def _int(value: Any) -> int:
    return int(value) if value else 0


def _enum(value: Any, names: tuple[str, ...], prefix: str) -> str:
    if isinstance(value, int):
        return names[value] if 0 <= value < len(names) else str(value)
    if not value:
        return names[0]
    return str(value).removeprefix(prefix)


# -- OTLP JSON -------------------------------------------------------------------------------------


def _any_value(value: dict[str, Any] | None) -> Any:
    """An OTLP ``AnyValue`` as a plain Python value."""
    if not value:
        return None
    for key, item in value.items():
        if key == "stringValue" or key == "boolValue" or key == "doubleValue" or key == "bytesValue":
            return item
        if key == "intValue":
            return int(item)
        if key == "arrayValue":
            return [_any_value(v) for v in item.get("values", ())]
        if key == "kvlistValue":
            return _kv(item.get("values"))
    return None


def _kv(pairs: list[dict[str, Any]] | None) -> dict[str, Any]:
    if not pairs:
        return {}
    return {p["key"]: _any_value(p.get("value")) for p in pairs}


def _otlp_logs(obj: dict[str, Any]) -> list[LogEntry]:
    out: list[LogEntry] = []
    for rl in obj.get("resourceLogs") or ():
        resource = _kv((rl.get("resource") or {}).get("attributes"))
        service = str(resource.get("service.name") or "")
        for sl in rl.get("scopeLogs") or ():
            for rec in sl.get("logRecords") or ():
                severity = _enum_int(rec.get("severityNumber"), "SEVERITY_NUMBER_")
                body = _any_value(rec.get("body"))
                out.append(
                    LogEntry(
                        time_ns=_int(rec.get("timeUnixNano")) or _int(rec.get("observedTimeUnixNano")),
                        service=service,
                        level=(rec.get("severityText") or level_name(severity)).upper(),
                        severity=severity,
                        message="" if body is None else body if isinstance(body, str) else _text(body),
                        trace_id=_id(rec.get("traceId")),
                        span_id=_id(rec.get("spanId")),
                        attributes=_kv(rec.get("attributes")),
                        resource=resource,
                    )
                )
    return out


def _enum_int(value: Any, prefix: str) -> int | None:
    """Severity numbers arrive as ints, or as names such as ``SEVERITY_NUMBER_INFO2``."""
    if value is None or isinstance(value, int):
        return value or None
    name = str(value).removeprefix(prefix)
    if name in ("UNSPECIFIED", ""):
        return None
    base = name.rstrip("0123456789")
    digits = name[len(base) :]
    if base not in _SEVERITY_NAMES:
        return None
    return _SEVERITY_NAMES.index(base) * 4 + (int(digits) if digits else 1)


def _otlp_spans(obj: dict[str, Any]) -> list[SpanEntry]:
    out: list[SpanEntry] = []
    for rs in obj.get("resourceSpans") or ():
        resource = _kv((rs.get("resource") or {}).get("attributes"))
        service = str(resource.get("service.name") or "")
        for ss in rs.get("scopeSpans") or ():
            scope = (ss.get("scope") or {}).get("name") or None
            for sp in ss.get("spans") or ():
                status = sp.get("status") or {}
                out.append(
                    SpanEntry(
                        trace_id=_id(sp.get("traceId")) or "",
                        span_id=_id(sp.get("spanId")) or "",
                        parent_span_id=_id(sp.get("parentSpanId")),
                        name=sp.get("name") or "",
                        kind=_enum(sp.get("kind"), _SPAN_KINDS, "SPAN_KIND_"),
                        start_ns=_int(sp.get("startTimeUnixNano")),
                        end_ns=_int(sp.get("endTimeUnixNano")),
                        status=_enum(status.get("code"), _STATUS_CODES, "STATUS_CODE_"),
                        status_message=status.get("message") or None,
                        attributes=_kv(sp.get("attributes")),
                        events=[
                            {
                                "name": e.get("name") or "",
                                "time_unix_nano": _int(e.get("timeUnixNano")),
                                "attributes": _kv(e.get("attributes")),
                            }
                            for e in sp.get("events") or ()
                        ],
                        service=service,
                        scope=scope,
                        resource=resource,
                    )
                )
    return out


def _text(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


# -- ours ------------------------------------------------------------------------------------------


def _our_log(obj: dict[str, Any]) -> LogEntry:
    resource = obj.get("resource") or {}
    severity = obj.get("severity_number")
    body = obj.get("body")
    return LogEntry(
        time_ns=obj.get("time_unix_nano") or 0,
        service=str(resource.get("service.name") or ""),
        level=(obj.get("severity_text") or level_name(severity)).upper(),
        severity=severity,
        message="" if body is None else body if isinstance(body, str) else _text(body),
        trace_id=_id(obj.get("trace_id")),
        span_id=_id(obj.get("span_id")),
        attributes=obj.get("attributes") or {},
        resource=resource,
    )


def _our_span(obj: dict[str, Any]) -> SpanEntry:
    resource = obj.get("resource") or {}
    status = obj.get("status") or {}
    return SpanEntry(
        trace_id=_id(obj.get("trace_id")) or "",
        span_id=_id(obj.get("span_id")) or "",
        parent_span_id=_id(obj.get("parent_span_id")),
        name=obj.get("name") or "",
        kind=_enum(obj.get("kind"), _SPAN_KINDS, "SPAN_KIND_"),
        start_ns=obj.get("start_time_unix_nano") or 0,
        end_ns=obj.get("end_time_unix_nano") or 0,
        status=_enum(status.get("code"), _STATUS_CODES, "STATUS_CODE_"),
        status_message=status.get("description") or None,
        attributes=obj.get("attributes") or {},
        events=obj.get("events") or [],
        service=str(resource.get("service.name") or ""),
        scope=obj.get("scope"),
        resource=resource,
    )


_OTLP_OTHER = ("resourceSpans", "resourceMetrics", "resourceProfiles")


def parse_logs(line: bytes) -> list[LogEntry]:
    """The log records on one line of either format; ``[]`` for a blank line or another signal's
    OTLP request (one collector file may serve several pipelines). Raises ``ValueError`` on garbage."""
    obj = _load(line)
    if obj is None:
        return []
    if "resourceLogs" in obj:
        return _otlp_logs(obj)
    if "time_unix_nano" in obj and "body" in obj:
        return [_our_log(obj)]
    if any(key in obj for key in _OTLP_OTHER):
        return []
    raise ValueError("neither an Observatory log line nor an OTLP ExportLogsServiceRequest")


def parse_spans(line: bytes) -> list[SpanEntry]:
    """The spans on one line of either format; ``[]`` for a blank line or another signal's OTLP
    request. Raises ``ValueError`` on garbage."""
    obj = _load(line)
    if obj is None:
        return []
    if "resourceSpans" in obj:
        return _otlp_spans(obj)
    if "span_id" in obj and "start_time_unix_nano" in obj:
        return [_our_span(obj)]
    if "resourceLogs" in obj or any(key in obj for key in _OTLP_OTHER):
        return []
    raise ValueError("neither an Observatory span line nor an OTLP ExportTraceServiceRequest")
