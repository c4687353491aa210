"""Finding traces in telemetry files: by id or unique prefix, the latest request, the slowest, the
latest failed ones; and one trace as OTLP JSON (``{"resourceSpans": [...]}``, as the collector's
``file`` exporter writes it).

A request is a SERVER span whose parent is not in the files (the caller's span lives elsewhere).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.reading.files import read_logs, read_spans
from gpt_observatory.telemetry.reading.records import LogEntry, SpanEntry

_KINDS: Final = {"UNSPECIFIED": 0, "INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}
_STATUS: Final = {"UNSET": 0, "OK": 1, "ERROR": 2}


class TraceNotFound(LookupError):
    """No trace matches; the message says what was looked for and where."""


@dataclass(frozen=True, slots=True)
class Trace:
    """The spans of one trace and the logs recorded under them, each in time order."""

    trace_id: str
    spans: tuple[SpanEntry, ...]
    logs: tuple[LogEntry, ...] = ()

    @property
    def start_ns(self) -> int:
        return min(s.start_ns for s in self.spans)

    @property
    def end_ns(self) -> int:
        return max(s.end_ns for s in self.spans)

    @property
    def root(self) -> SpanEntry:
        """The earliest span whose parent is not in the trace."""
        ids = {s.span_id for s in self.spans}
        roots = [s for s in self.spans if not s.parent_span_id or s.parent_span_id not in ids]
        return min(roots or self.spans, key=lambda s: s.start_ns)

    @property
    def failed(self) -> bool:
        return any(failed(s) for s in self.spans)


def kind_name(span: SpanEntry) -> str:
    """``SERVER``, ``CLIENT``, ... whichever form the file used (name, ``SPAN_KIND_*`` or number)."""
    kind: Any = span.kind
    if isinstance(kind, int):
        return next((k for k, v in _KINDS.items() if v == kind), "UNSPECIFIED")
    return str(kind).removeprefix("SPAN_KIND_").upper()


def duration_ns(span: SpanEntry) -> int:
    return max(0, (span.end_ns or span.start_ns) - span.start_ns)


def failed(span: SpanEntry) -> bool:
    """Status ERROR, an HTTP status of 500 or more, or ``error.type`` set."""
    status = span.attributes.get(names.HTTP_RESPONSE_STATUS_CODE)
    return (
        span.status == "ERROR"
        or (isinstance(status, int | str) and str(status).isdigit() and int(status) >= 500)
        or bool(span.attributes.get(names.ERROR_TYPE))
    )


def is_request(span: SpanEntry, span_ids: set[str]) -> bool:
    return kind_name(span) == "SERVER" and (not span.parent_span_id or span.parent_span_id not in span_ids)


def _group(spans: Iterable[SpanEntry]) -> dict[str, list[SpanEntry]]:
    by_trace: dict[str, list[SpanEntry]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for s in spans:
        key = (s.trace_id, s.span_id)
        if key not in seen:  # the same span read twice (a file copied beside its rotation) counts once
            seen.add(key)
            by_trace[s.trace_id].append(s)
    return by_trace


def _trace(trace_id: str, spans: list[SpanEntry], source: Path, with_logs: bool) -> Trace:
    logs: tuple[LogEntry, ...] = ()
    if with_logs:
        # A traces file given alone: its logs are beside it (ours: logs.jsonl; a collector's: logs.json).
        folder = source.parent if source.is_file() else source
        logs = tuple(sorted((e for e in read_logs(folder) if e.trace_id == trace_id), key=lambda e: e.time_ns))
    return Trace(trace_id, tuple(sorted(spans, key=lambda s: s.start_ns)), logs)


def find(source: Path, trace_id: str, *, with_logs: bool = True) -> Trace:
    """The trace whose id is ``trace_id`` or starts with it (case-insensitive)."""
    wanted = trace_id.strip().lower()
    if not wanted or any(c not in "0123456789abcdef" for c in wanted):
        raise TraceNotFound(f"{trace_id!r} is not a trace id: expected up to 32 hex digits")
    by_trace = _group(s for s in read_spans(source) if s.trace_id.startswith(wanted))
    if not by_trace:
        raise TraceNotFound(f"no trace {wanted} in {source}")
    if len(by_trace) > 1 and wanted not in by_trace:
        listed = ", ".join(sorted(by_trace)[:10]) + (" ..." if len(by_trace) > 10 else "")
        raise TraceNotFound(f"{len(by_trace)} traces start with {wanted}: {listed}; give more digits")
    tid = wanted if wanted in by_trace else next(iter(by_trace))
    return _trace(tid, by_trace[tid], source, with_logs)


def _requests(source: Path, since_ns: int | None) -> Iterator[tuple[SpanEntry, list[SpanEntry]]]:
    """(root SERVER span, all spans of its trace) for every request started at or after ``since_ns``."""
    for spans in _group(read_spans(source)).values():
        ids = {s.span_id for s in spans}
        roots = [s for s in spans if is_request(s, ids) and (since_ns is None or s.start_ns >= since_ns)]
        if roots:
            yield min(roots, key=lambda s: s.start_ns), spans


def last(source: Path) -> Trace:
    """The trace of the latest request (root SERVER span)."""
    found = max(_requests(source, None), key=lambda r: r[0].start_ns, default=None)
    if found is None:
        raise TraceNotFound(f"no request (root SERVER span) in {source}")
    return _trace(found[0].trace_id, found[1], source, True)


def slowest(source: Path, n: int, since_ns: int | None = None) -> list[Trace]:
    """The ``n`` slowest requests started since ``since_ns``, slowest first."""
    ranked = sorted(_requests(source, since_ns), key=lambda r: duration_ns(r[0]), reverse=True)[:n]
    if not ranked:
        raise TraceNotFound(f"no request (root SERVER span) in {source}" + (" in that time" if since_ns else ""))
    return [_trace(root.trace_id, spans, source, True) for root, spans in ranked]


def latest_failed(source: Path, n: int = 1, since_ns: int | None = None) -> list[Trace]:
    """The ``n`` latest requests with a failed span (see :func:`failed`), latest first."""
    bad = [r for r in _requests(source, since_ns) if any(failed(s) for s in r[1])]
    ranked = sorted(bad, key=lambda r: r[0].start_ns, reverse=True)[:n]
    if not ranked:
        raise TraceNotFound(f"no failed request in {source}" + (" in that time" if since_ns else ""))
    return [_trace(root.trace_id, spans, source, True) for root, spans in ranked]


# ----------------------------------------------------------------------------- OTLP JSON
def any_value(value: Any) -> dict[str, Any]:
    """An OTLP JSON ``AnyValue`` (64-bit integers as strings, as protobuf JSON writes them)."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, list | tuple):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": key_values(value)}}
    if value is None:
        return {}
    return {"stringValue": str(value)}


def key_values(attributes: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [{"key": k, "value": any_value(v)} for k, v in (attributes or {}).items()]


def _event(event: Any) -> dict[str, Any]:
    if not isinstance(event, dict):
        return {"name": str(event)}
    time_ns = event.get("time_unix_nano", event.get("timeUnixNano", event.get("time_ns")))
    attrs = event.get("attributes") or {}
    if isinstance(attrs, list):  # already OTLP key/values
        return {"timeUnixNano": str(time_ns or 0), "name": event.get("name", ""), "attributes": attrs}
    return {"timeUnixNano": str(time_ns or 0), "name": event.get("name", ""), "attributes": key_values(attrs)}


def otlp_span(span: SpanEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"traceId": span.trace_id, "spanId": span.span_id}
    if span.parent_span_id:
        out["parentSpanId"] = span.parent_span_id
    out |= {
        "name": span.name,
        "kind": _KINDS.get(kind_name(span), 0),
        "startTimeUnixNano": str(span.start_ns),
        "endTimeUnixNano": str(span.end_ns),
        "attributes": key_values(span.attributes),
    }
    if span.events:
        out["events"] = [_event(e) for e in span.events]
    status: dict[str, Any] = {}
    if span.status_message:
        status["message"] = span.status_message
    if _STATUS.get(span.status, 0):
        status["code"] = _STATUS[span.status]
    out["status"] = status
    return out


def to_otlp(trace: Trace) -> dict[str, Any]:
    """The trace as one OTLP JSON ``TracesData``: spans grouped by resource, then scope."""
    resources: dict[str, tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]] = {}
    for span in trace.spans:
        resource = dict(span.resource or {})
        if span.service and names.SERVICE_NAME not in resource:
            resource[names.SERVICE_NAME] = span.service
        key = repr(sorted(resource.items(), key=lambda kv: kv[0]))
        scopes = resources.setdefault(key, (resource, defaultdict(list)))[1]
        scopes[span.scope or ""].append(otlp_span(span))
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": key_values(resource)},
                "scopeSpans": [
                    {"scope": {"name": scope} if scope else {}, "spans": spans} for scope, spans in scopes.items()
                ],
            }
            for resource, scopes in resources.values()
        ]
    }
