"""``observatory logs``: every service's logs from the state directory (or a collector's ``file``
exporter output), merged by time, filtered, followed like ``tail -F``."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import typer

from gpt_observatory.telemetry.settings import split_commas

app = typer.Typer(help="Logs of every process that wrote to the state directory, merged by time; -f follows.")


@app.callback(invoke_without_command=True)
def logs(
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new records (across rotation)."),
    lines: int | None = typer.Option(
        None, "-n", "--lines", min=0, help="Only the last N records (default: all; 10 with --follow)."
    ),
    since: str | None = typer.Option(None, "--since", help="From this long ago (10m, 2h, 1d) or an ISO time (UTC)."),
    until: str | None = typer.Option(None, "--until", help="Up to this long ago or this ISO time (UTC)."),
    level: str | None = typer.Option(None, "--level", help="Minimum level: trace, debug, info, warning, error."),
    service: list[str] | None = typer.Option(None, "--service", help="Only this service.name (repeat, or a,b)."),
    tenant: str | None = typer.Option(None, "--tenant", help="Only records of this tenant (observatory.tenant)."),
    model: str | None = typer.Option(None, "--model", help="Only records about this model (gen_ai.*.model)."),
    trace_id: str | None = typer.Option(None, "--trace", help="Only records of this trace id (a prefix is enough)."),
    grep: str | None = typer.Option(None, "--grep", help="Only records whose message matches this regex."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line (for jq)."),
    fields: str | None = typer.Option(
        None, "--fields", help="Attribute columns to show, comma-separated (default: tenant and model)."
    ),
    source: Path | None = typer.Option(
        None, "--source", help="A state telemetry dir, or a collector file exporter's file or dir."
    ),
) -> None:
    """Show logs: time (UTC), service, level, short trace id, message and chosen attributes."""
    from gpt_observatory.telemetry.reading import ReadStats
    from gpt_observatory.telemetry.reading import logs as reading
    from gpt_observatory.telemetry.reading.files import default_source

    query = _query(since, until, level, service, tenant, model, trace_id, grep)
    field_list = split_commas(fields) if fields is not None else None
    source = source if source is not None else default_source()
    stats = ReadStats()
    printer = reading.Printer(sys.stdout.buffer, as_json=as_json, fields=field_list, console=_console(as_json))
    try:
        if follow:
            reading.follow(source, query, printer, lines=10 if lines is None else lines, stats=stats)
            return
        if not source.exists():
            typer.echo(f"observatory logs: {source} does not exist; point --source at a telemetry dir", err=True)
            raise typer.Exit(1)
        printer.write(reading.history(source, query, lines=lines, stats=stats))
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # The reader (head, less) went away: stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    if stats.bad_lines:
        typer.echo(f"observatory logs: skipped {stats.bad_lines} line(s) that were not log records", err=True)


def _query(
    since: str | None,
    until: str | None,
    level: str | None,
    service: list[str] | None,
    tenant: str | None,
    model: str | None,
    trace_id: str | None,
    grep: str | None,
):
    from gpt_observatory.telemetry.reading.logs import LogQuery, min_severity
    from gpt_observatory.telemetry.reading.when import parse_when

    now = time.time_ns()
    try:
        since_ns = parse_when(since, now) if since else None
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--since") from None
    try:
        until_ns = parse_when(until, now) if until else None
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--until") from None
    if since_ns is not None and until_ns is not None and until_ns < since_ns:
        raise typer.BadParameter("--until is before --since", param_hint="--until")
    try:
        severity = min_severity(level) if level else None
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--level") from None
    if trace_id is not None and not re.fullmatch(r"[0-9a-fA-F]{1,32}", trace_id):
        raise typer.BadParameter(f"{trace_id!r} is not a hex trace id (or prefix of one)", param_hint="--trace")
    try:
        pattern = re.compile(grep) if grep else None
    except re.error as e:
        raise typer.BadParameter(f"{grep!r} is not a regular expression: {e}", param_hint="--grep") from None
    services = frozenset(name for item in service or () for name in split_commas(item))
    return LogQuery(
        since_ns=since_ns,
        until_ns=until_ns,
        min_severity=severity,
        services=services,
        tenant=tenant,
        model=model,
        trace_prefix=trace_id.lower() if trace_id else None,
        grep=pattern,
    )



def _console(as_json: bool):
    """A rich console when stdout is a colour terminal (rich honours NO_COLOR); otherwise None."""
    if as_json:
        return None
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal or console.no_color or console.color_system is None:
        return None
    return console
