"""``observatory trace``: one request's spans as a waterfall with its logs under them, or as OTLP JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

# A group whose callback is the command: options may follow the ID (click's groups stop at the first argument).
app = typer.Typer(
    help="Show one request's spans as a waterfall, with each span's logs under it.",
    context_settings={"allow_interspersed_args": True},
    subcommand_metavar="",
)

def since_ns(text: str, now_s: float | None = None) -> int:
    """``10m``, ``2h``, ``1d`` before now, or an ISO 8601 time (UTC when it names no zone), in ns."""
    from gpt_observatory.telemetry.reading.when import parse_when

    now_ns = time.time_ns() if now_s is None else int(now_s * 1e9)
    try:
        return parse_when(text, now_ns)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--since") from None



@app.callback(invoke_without_command=True)
def trace(
    trace_id: str | None = typer.Argument(None, metavar="[ID]", help="A trace id, or a prefix of one that is unique."),
    last: bool = typer.Option(False, "--last", help="The latest request (root SERVER span)."),
    slow: int | None = typer.Option(None, "--slow", min=1, metavar="N", help="The N slowest requests since --since."),
    errors: bool = typer.Option(False, "--errors", help="The latest failed request (ERROR status, HTTP 5xx or error.type)."),
    count: int = typer.Option(1, "-n", "--count", min=1, help="With --errors: how many of the latest failed requests."),
    since: str | None = typer.Option(None, "--since", help="With --slow/--errors: only requests since (10m, 2h, ISO time)."),
    as_json: bool = typer.Option(False, "--json", help="Print OTLP JSON ({\"resourceSpans\": ...}), one trace a line."),
    source: Path | None = typer.Option(
        None, "--source", help="A telemetry folder or file: ours (<state>/telemetry) or a collector file exporter's."
    ),
) -> None:
    """Show a trace by ID, the latest request (--last), the slowest (--slow N) or the latest failed (--errors)."""
    from gpt_observatory.telemetry.reading import traces
    from gpt_observatory.telemetry.reading.files import default_source

    chosen = [name for name, on in (("ID", trace_id is not None), ("--last", last), ("--slow", slow is not None),
                                    ("--errors", errors)) if on]
    if len(chosen) != 1:
        raise typer.BadParameter(
            "give one of ID, --last, --slow N or --errors" + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    if since is not None and not (slow or errors):
        raise typer.BadParameter("--since goes with --slow or --errors", param_hint="--since")
    start = since_ns(since) if since is not None else None
    folder = source if source is not None else default_source()
    if not folder.exists():
        _fail(f"no telemetry at {folder} (give --source: a telemetry folder or file)")
    try:
        if trace_id is not None:
            found = [traces.find(folder, trace_id)]
        elif last:
            found = [traces.last(folder)]
        elif slow is not None:
            found = traces.slowest(folder, slow, start)
        else:
            found = traces.latest_failed(folder, count, start)
    except traces.TraceNotFound as e:
        _fail(str(e))
    if as_json:
        for t in found:
            typer.echo(json.dumps(traces.to_otlp(t), separators=(",", ":")))
        return
    from rich.console import Console

    from gpt_observatory.telemetry.reading.waterfall import render

    console = Console()
    if not console.is_terminal:  # piped or captured: room for the bar and the attributes
        console = Console(width=max(console.width, 200))
    for t in found:
        console.print(render(t))
        console.print()


def _fail(message: str) -> None:
    typer.echo(f"observatory trace: {message}", err=True)
    raise typer.Exit(1)
