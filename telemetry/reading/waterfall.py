"""One trace as a terminal waterfall (rich): a row per span, indented under its parent, a bar on the
trace's time axis, duration, status and the attributes worth seeing at a glance; each span's logs
(matched by span id) listed under it in time order. Spans whose parent is not in the files, and
logs of the trace whose span is not, are shown at the root."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Final

from rich.console import Group
from rich.table import Table
from rich.text import Text

from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.reading.records import LogEntry, SpanEntry
from gpt_observatory.telemetry.reading.traces import Trace, duration_ns, failed, kind_name

BAR_WIDTH: Final = 32
_REPLICA: Final = "service.instance.id"  # resource attribute: which replica answered (read, never emitted)
_LEVEL_STYLE: Final = {"DEBUG": "dim", "INFO": "", "WARNING": "yellow", "WARN": "yellow", "ERROR": "red",
                       "CRITICAL": "bold red", "FATAL": "bold red"}


def key_attributes(span: SpanEntry) -> str:
    """Tenant, model and version, tokens, HTTP status and the peer, in words."""
    a = span.attributes
    parts: list[str] = []
    if tenant := a.get(names.TENANT):
        parts.append(f"tenant={tenant}")
    model = a.get(names.MODEL_NAME) or a.get(names.GEN_AI_RESPONSE_MODEL) or a.get(names.GEN_AI_REQUEST_MODEL)
    if model:
        version = a.get(names.MODEL_VERSION)
        role = a.get(names.MODEL_ROLE)
        parts.append(f"model={model}" + (f" v{version}" if version is not None else "") + (f" ({role})" if role else ""))
    inp, out = a.get(names.GEN_AI_USAGE_INPUT_TOKENS), a.get(names.GEN_AI_USAGE_OUTPUT_TOKENS)
    if inp is not None or out is not None:
        parts.append(f"tokens={inp if inp is not None else '?'}→{out if out is not None else '?'}")
    if (status := a.get(names.HTTP_RESPONSE_STATUS_CODE)) is not None:
        parts.append(f"http={status}")
    if address := a.get(names.SERVER_ADDRESS):
        port = a.get(names.SERVER_PORT)
        parts.append(f"server={address}" + (f":{port}" if port else ""))
    if kind_name(span) == "SERVER" and (replica := span.resource.get(_REPLICA)):
        parts.append(f"replica={replica}")
    if error := a.get(names.ERROR_TYPE):
        parts.append(f"error={error}")
    return " ".join(parts)


def _ms(ns: int) -> str:
    ms = ns / 1e6
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _bar(start: int, end: int, t0: int, total: int, style: str) -> Text:
    left = round((start - t0) / total * BAR_WIDTH) if total else 0
    width = max(1, round((end - start) / total * BAR_WIDTH)) if total else BAR_WIDTH
    left = min(left, BAR_WIDTH - 1)
    width = min(width, BAR_WIDTH - left)
    return Text(" " * left) + Text("█" * width, style=style) + Text(" " * (BAR_WIDTH - left - width))


def _mark(at: int, t0: int, total: int) -> Text:
    pos = min(BAR_WIDTH - 1, max(0, round((at - t0) / total * BAR_WIDTH))) if total else 0
    return Text(" " * pos + "·" + " " * (BAR_WIDTH - pos - 1), style="dim")


def _clock(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%H:%M:%S.%f")[:-3]


def ordered(trace: Trace) -> Iterator[tuple[int, SpanEntry]]:
    """(depth, span) in display order: parents before children, siblings by start time."""
    ids = {s.span_id for s in trace.spans}
    children: dict[str | None, list[SpanEntry]] = defaultdict(list)
    for s in trace.spans:
        children[s.parent_span_id if s.parent_span_id in ids else None].append(s)

    def walk(parent: str | None, depth: int) -> Iterator[tuple[int, SpanEntry]]:
        for span in sorted(children.get(parent, ()), key=lambda s: s.start_ns):
            yield depth, span
            yield from walk(span.span_id, depth + 1)

    yield from walk(None, 0)


def render(trace: Trace) -> Group:
    """The waterfall of ``trace``: a title line, then a rich table."""
    t0, total = trace.start_ns, trace.end_ns - trace.start_ns
    root = trace.root
    title = (f"trace {trace.trace_id}  {root.name} ({root.service})  {_ms(total)}  "
             f"{len(trace.spans)} spans  {len(trace.logs)} logs  {_clock(t0)} UTC")
    table = Table(box=None, pad_edge=False, show_edge=False)
    table.add_column("span", no_wrap=True, overflow="ellipsis", max_width=60)
    table.add_column(f"0 … {_ms(total)}", no_wrap=True, width=BAR_WIDTH)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("attributes", overflow="fold")

    span_ids = {s.span_id for s in trace.spans}
    logs: dict[str | None, list[LogEntry]] = defaultdict(list)
    for entry in trace.logs:
        logs[entry.span_id if entry.span_id in span_ids else None].append(entry)

    def log_rows(entries: list[LogEntry], depth: int) -> None:
        for e in sorted(entries, key=lambda e: e.time_ns):
            style = _LEVEL_STYLE.get(str(e.level).upper(), "")
            line = Text("  " * depth + "↳ ") + Text(f"{_clock(e.time_ns)} {e.level}", style=style or "dim")
            table.add_row(line, _mark(e.time_ns, t0, total), "", "", Text(e.message, style=style))

    for depth, span in ordered(trace):
        bad = failed(span)
        style = "red" if bad else "green" if span.status == "OK" else "cyan"
        status = "ERROR" if bad else span.status
        if span.status_message:
            status += f": {span.status_message}"
        name = Text("  " * depth) + Text(span.name, style="bold" if depth == 0 else "")
        name += Text(f"  {kind_name(span).lower()} · {span.service}", style="dim")
        table.add_row(
            name, _bar(span.start_ns, span.end_ns, t0, total, style), _ms(duration_ns(span)),
            Text(status, style="red" if bad else ""), key_attributes(span),
        )
        log_rows(logs.get(span.span_id, []), depth + 1)
    if logs.get(None):
        log_rows(logs[None], 0)
    return Group(Text(title, style="bold"), table)
