"""Which files hold a signal, oldest first, and reading every record out of them.

A source is one of:

- a state telemetry directory (ours): ``logs.jsonl`` with its backups ``logs.jsonl.1`` (newer) ...
  ``logs.jsonl.N`` (oldest), as ``RotatingFile`` names them;
- an OpenTelemetry Collector ``file`` exporter's file (``format: json``, as written by
  opentelemetry-collector-contrib v0.133.0), with the backups its lumberjack rotation leaves beside it:
  ``logs.json`` -> ``logs-2024-01-01T00-00-00.000.json``;
- a directory of such files: a file belongs to a signal by its contents (the first request in it says
  ``resourceLogs`` or ``resourceSpans``), so one exporter path shared by several pipelines works too.

Files ending in ``.gz`` (rotated and compressed by logrotate or lumberjack) are read transparently.
The exporter's own ``compression: zstd`` and ``format: proto`` are binary; they are not read here.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, TypeVar

from gpt_observatory.telemetry.reading.records import LogEntry, SpanEntry, parse_logs, parse_spans

Signal = Literal["logs", "traces"]
T = TypeVar("T")

_OURS = {"logs.jsonl", "traces.jsonl", "metrics.jsonl"}
_NUMBERED = re.compile(r"^(?P<base>.+)\.(?P<n>\d+)(?:\.gz)?$")
_STAMP = r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}\.\d{3}"
_STAMPED = re.compile(rf"^(?P<stem>.+)-(?P<stamp>{_STAMP})(?P<ext>\.[^.]*)?(?:\.gz)?$")
_MARKERS = {"logs": b'"resourceLogs"', "traces": b'"resourceSpans"'}
_SNIFF_BYTES = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class ReadStats:
    """What a read came across besides records: lines it could not parse, files it read."""

    bad_lines: int = 0
    files: int = 0


def _family(name: str) -> tuple[str, tuple[int, str]]:
    """(the live file's name, a sort key that puts older backups first) for one file name."""
    if m := _NUMBERED.match(name):
        return m["base"], (-int(m["n"]), "")
    if m := _STAMPED.match(name):
        return m["stem"] + (m["ext"] or ""), (-1, m["stamp"])  # the stamp sorts as time
    return name.removesuffix(".gz"), (0, "")


def _rotated(folder: Path, base: str) -> list[Path]:
    """The live file ``base`` (if present) and its backups in ``folder``, oldest first."""
    members = []
    for path in folder.iterdir():
        name = path.name
        if (name == base or name.startswith(base.rsplit(".", 1)[0])) and _family(name)[0] == base and path.is_file():
            members.append((_family(name)[1], path))
    return [p for _, p in sorted(members)]


def open_lines(path: Path) -> IO[bytes]:
    """A binary reader of ``path``, gunzipping when it is gzip (by name or by magic bytes)."""
    fh = open(path, "rb")  # noqa: SIM115 - the caller closes it
    if path.suffix == ".gz" or fh.peek(2)[:2] == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    return fh


def _sniff(path: Path) -> bytes:
    try:
        with open_lines(path) as fh:
            return fh.read(_SNIFF_BYTES)
    except (OSError, EOFError):
        return b""


def _name_says(name: str, signal: Signal) -> bool:
    words = ("log",) if signal == "logs" else ("trace", "span")
    return any(w in name.lower() for w in words)


def default_source() -> Path:
    """Where the embedded ``jsonl`` backend writes: the state folder's ``telemetry/`` (``OBSERVATORY_STATE_DIR``)."""
    from gpt_observatory.telemetry.backends.jsonl import telemetry_dir
    from gpt_observatory.telemetry.settings import load

    return telemetry_dir(load())


def signal_files(source: Path, signal: Signal) -> list[Path]:
    """Every file under ``source`` that holds ``signal``, oldest first; ``[]`` when there is none."""
    source = Path(source)
    if source.is_file():
        if _family(source.name)[0] != source.name:
            return [source]  # a backup named on its own
        return _rotated(source.parent, source.name)
    if not source.is_dir():
        return []
    families: dict[str, list[Path]] = {}
    for path in source.iterdir():
        if path.is_file() and not path.name.startswith("."):
            families.setdefault(_family(path.name)[0], []).append(path)
    ours = f"{signal}.jsonl"
    chosen: list[Path] = []
    for base in sorted(families):
        if base in _OURS:
            if base == ours:
                chosen.extend(_rotated(source, base))
            continue
        members = _rotated(source, base)
        head = next((h for h in map(_sniff, reversed(members)) if h.strip()), b"")
        if (_MARKERS[signal] in head) if head else _name_says(base, signal):
            chosen.extend(members)
    return chosen


def _read_file(path: Path, parse: Callable[[bytes], list[T]], stats: ReadStats) -> Iterator[T]:
    try:
        fh = open_lines(path)
    except OSError:
        return  # rotated away between listing and opening
    stats.files += 1
    with fh:
        try:
            for line in fh:
                try:
                    records = parse(line)
                except (ValueError, KeyError, TypeError, AttributeError):
                    stats.bad_lines += 1
                    continue
                yield from records
        except (OSError, EOFError):
            stats.bad_lines += 1  # a truncated or corrupt gzip member


def read_log_file(path: Path, stats: ReadStats | None = None) -> Iterator[LogEntry]:
    """The log records of one file (gzip or not); bad lines skipped and counted."""
    return _read_file(path, parse_logs, stats if stats is not None else ReadStats())


def read_span_file(path: Path, stats: ReadStats | None = None) -> Iterator[SpanEntry]:
    """The spans of one file (gzip or not); bad lines skipped and counted."""
    return _read_file(path, parse_spans, stats if stats is not None else ReadStats())


def read_logs(source: Path, stats: ReadStats | None = None) -> Iterator[LogEntry]:
    """Every log record in every file of ``source``, oldest file first. A line that does not parse
    is skipped and counted in ``stats``; it never ends the read."""
    stats = stats if stats is not None else ReadStats()
    for path in signal_files(source, "logs"):
        yield from _read_file(path, parse_logs, stats)


def read_spans(source: Path, stats: ReadStats | None = None) -> Iterator[SpanEntry]:
    """Every span in every file of ``source``, oldest file first; bad lines as in ``read_logs``."""
    stats = stats if stats is not None else ReadStats()
    for path in signal_files(source, "traces"):
        yield from _read_file(path, parse_spans, stats)
