"""What ``observatory logs`` does with records: filter them, merge them by time, and print them as
one line each (rich text for a terminal, plain text otherwise) or as one JSON object a line."""

from __future__ import annotations

import heapq
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Final

import orjson

from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.reading.files import ReadStats, read_log_file, signal_files
from gpt_observatory.telemetry.reading.follow import Follower
from gpt_observatory.telemetry.reading.records import LogEntry, parse_logs

DEFAULT_FIELDS: Final = (names.TENANT, names.GEN_AI_REQUEST_MODEL)

# Minimum-level names a user may give, as OTel severity numbers (loguru's names included).
LEVELS: Final = {
    "TRACE": 1,
    "DEBUG": 5,
    "INFO": 9,
    "SUCCESS": 10,
    "WARN": 13,
    "WARNING": 13,
    "ERROR": 17,
    "FATAL": 21,
    "CRITICAL": 21,
}

_LEVEL_STYLES: Final = {
    "TRACE": "dim",
    "DEBUG": "dim",
    "INFO": "green",
    "SUCCESS": "bold green",
    "WARN": "yellow",
    "WARNING": "yellow",
    "ERROR": "red",
    "FATAL": "bold red",
    "CRITICAL": "bold red",
}

# Control characters would let a logged string drive the terminal; they are shown escaped.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F)} | {0x0A: "\\n"}


def min_severity(level: str) -> int:
    """The severity number of a level name (case-insensitive); ``ValueError`` names the choices."""
    try:
        return LEVELS[level.strip().upper()]
    except KeyError:
        raise ValueError(f"unknown level {level!r}; choose one of {', '.join(LEVELS).lower()}") from None


def entry_severity(entry: LogEntry) -> int:
    return entry.severity or LEVELS.get(entry.level, 0)


@dataclass(frozen=True)
class LogQuery:
    """Which records to show; every condition given must hold. Cheapest checks run first."""

    since_ns: int | None = None
    until_ns: int | None = None
    min_severity: int | None = None
    services: frozenset[str] = frozenset()
    tenant: str | None = None
    model: str | None = None
    trace_prefix: str | None = None
    grep: re.Pattern[str] | None = None

    def matches(self, e: LogEntry) -> bool:
        if self.since_ns is not None and e.time_ns < self.since_ns:
            return False
        if self.until_ns is not None and e.time_ns > self.until_ns:
            return False
        if self.min_severity is not None and entry_severity(e) < self.min_severity:
            return False
        if self.services and e.service not in self.services:
            return False
        if self.trace_prefix is not None and not (e.trace_id or "").startswith(self.trace_prefix):
            return False
        attrs = e.attributes
        if self.tenant is not None and attrs.get(names.TENANT) != self.tenant:
            return False
        if self.model is not None and self.model not in (
            attrs.get(names.GEN_AI_REQUEST_MODEL),
            attrs.get(names.GEN_AI_RESPONSE_MODEL),
        ):
            return False
        return self.grep is None or self.grep.search(e.message) is not None


def reordered(entries: Iterable[LogEntry], window: int = 4096) -> Iterator[LogEntry]:
    """``entries`` in time order, given that none is more than ``window`` places from where it
    belongs: in one file, batches from several processes interleave only that little."""
    heap: list[tuple[int, int, LogEntry]] = []
    for seq, e in enumerate(entries):
        item = (e.time_ns, seq, e)
        if len(heap) < window:
            heapq.heappush(heap, item)
        else:
            yield heapq.heappushpop(heap, item)[2]
    while heap:
        yield heapq.heappop(heap)[2]


def merged(streams: Sequence[Iterable[LogEntry]], window: int = 4096) -> Iterator[LogEntry]:
    """One time-ordered stream from several (one a file: backups of two writers overlap in time)."""
    if len(streams) == 1:
        return reordered(streams[0], window)
    return heapq.merge(*(reordered(s, window) for s in streams), key=lambda e: e.time_ns)


@dataclass
class LineFormat:
    """How one record is printed: time (UTC), service, level, short trace id, message, attributes."""

    fields: Sequence[str] = DEFAULT_FIELDS
    service_width: int = 10
    today: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d"))

    def clock(self, time_ns: int) -> str:
        when = datetime.fromtimestamp(time_ns / 1e9, UTC)
        stamp = when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        return stamp[11:] if stamp.startswith(self.today) else stamp

    def columns(self, e: LogEntry) -> tuple[str, str, str, str, str, str]:
        attrs = " ".join(f"{k}={_value(e.attributes[k])}" for k in self.fields if k in e.attributes)
        return (
            self.clock(e.time_ns),
            (e.service or "-").ljust(self.service_width),
            (e.level or "-").ljust(7),
            e.trace_id[:8] if e.trace_id else "-" * 8,
            e.message.translate(_CONTROL),
            attrs.translate(_CONTROL),
        )

    def plain(self, e: LogEntry) -> str:
        return " ".join(c for c in self.columns(e) if c)

    def rich(self, e: LogEntry) -> Any:
        from rich.text import Text

        clock, service, level, trace_id, message, attrs = self.columns(e)
        style = _LEVEL_STYLES.get(e.level, "")
        text = Text.assemble(
            (clock, "dim"), " ", (service, "cyan"), " ", (level, style), " ", (trace_id, "magenta"), " ",
            (message, style if entry_severity(e) >= LEVELS["WARN"] else ""),
        )  # fmt: skip
        if attrs:
            text.append(" " + attrs, "dim")
        return text


def _value(v: Any) -> str:
    return v if isinstance(v, str) else orjson.dumps(v, default=str).decode()


def json_line(e: LogEntry, fields: Sequence[str] | None = None) -> bytes:
    """One record as a JSON object and a newline, for ``jq``; ``fields`` narrows the attributes."""
    attrs = e.attributes if fields is None else {k: e.attributes[k] for k in fields if k in e.attributes}
    return orjson.dumps(
        {
            "time": datetime.fromtimestamp(e.time_ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            + f".{e.time_ns % 10**9:09d}Z",
            "time_unix_nano": e.time_ns,
            "service": e.service,
            "level": e.level,
            "severity_number": e.severity,
            "message": e.message,
            "trace_id": e.trace_id,
            "span_id": e.span_id,
            "attributes": attrs,
        },
        default=str,
        option=orjson.OPT_APPEND_NEWLINE,
    )


def history(
    source: Path, query: LogQuery, *, lines: int | None = None, stats: ReadStats | None = None
) -> Iterator[LogEntry]:
    """The records of ``source`` that ``query`` matches, merged by time across files; only the last
    ``lines`` of them when given. Files last written before ``query.since_ns`` are not opened."""
    paths = signal_files(source, "logs")
    if query.since_ns is not None:
        paths = [p for p in paths if _mtime_ns(p) >= query.since_ns]
    stream = merged([filter(query.matches, read_log_file(p, stats)) for p in paths])
    return iter(deque(stream, maxlen=lines)) if lines is not None else stream


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


class Printer:
    """Writes records to a stream: JSON lines, rich text (a colour terminal) or plain text."""

    def __init__(
        self, out: BinaryIO, *, as_json: bool = False, fields: Sequence[str] | None = None, console: Any = None
    ):
        self.out, self.as_json, self.console = out, as_json, console
        self.fields = fields
        self.format = LineFormat(fields=DEFAULT_FIELDS if fields is None else fields)

    def write(self, entries: Iterable[LogEntry]) -> int:
        count = 0
        if self.as_json:
            write, fields = self.out.write, self.fields
            for e in entries:
                write(json_line(e, fields))
                count += 1
        elif self.console is not None:
            for e in entries:
                self.console.print(self.format.rich(e), soft_wrap=True, highlight=False)
                count += 1
        else:
            write, plain = self.out.write, self.format.plain
            for e in entries:
                write(plain(e).encode("utf-8", "replace") + b"\n")
                count += 1
        self.out.flush()
        return count


def follow(
    source: Path,
    query: LogQuery,
    printer: Printer,
    *,
    lines: int = 10,
    interval_s: float = 0.25,
    stats: ReadStats | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Print the last ``lines`` matching records, then every new one as it is written, until
    ``stop()`` says so (or the process is interrupted). Reads incrementally: memory stays flat."""
    follower: Follower[LogEntry] = Follower(source, "logs", parse_logs, stats=stats)
    printer.write(_drain(follower, query, keep=lines))
    while not stop():
        time.sleep(interval_s)
        printer.write(_drain(follower, query))


def _drain(follower: Follower[LogEntry], query: LogQuery, keep: int | None = None) -> list[LogEntry]:
    """What is new and matches (the last ``keep`` of it), in time order. Files renamed while they
    were read (a rotation) may have hidden an older file's tail from the poll: it is read into the
    same batch."""
    batch: deque[LogEntry] = deque(filter(query.matches, follower.poll()), maxlen=keep)
    for _ in range(4):
        if not follower.changed:
            break
        batch.extend(filter(query.matches, follower.poll()))
    return sorted(batch, key=_time)


def _time(e: LogEntry) -> int:
    return e.time_ns
