"""``observatory dashboards``: export the Grafana dashboards, Prometheus and Collector configs,
check them against the names module, and verify their queries on a live Prometheus."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Grafana dashboards, Prometheus scrape config and alert rules, OpenTelemetry Collector config.",
    no_args_is_help=True,
)


@app.command()
def export(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder to write grafana/, prometheus/ and otelcol/ into. "
                                   "Default: the package's own folder (the committed artefacts)."),
    ] = None,
) -> None:
    """Write every artefact as the code builds it."""
    from gpt_observatory.dashboards.artefacts import ROOT
    from gpt_observatory.dashboards.artefacts import export as write

    for path in write(out or ROOT):
        typer.echo(str(path))


@app.command()
def check(
    root: Annotated[
        Path | None, typer.Option(help="Folder holding the artefacts to check. Default: the committed ones.")
    ] = None,
    promtool: Annotated[str, typer.Option(help="promtool binary used to parse expressions and test rules.")] = "promtool",
    no_promtool: Annotated[
        bool, typer.Option("--no-promtool", help="Skip Prometheus's parser and promtool's checks (names only).")
    ] = False,
) -> None:
    """Check the artefacts against the names module, Prometheus's parser and promtool.

    Every metric and label a panel, variable or rule reads must exist, every query must parse, the
    committed files must equal what the code builds and the Collector config must be consistent;
    exit 1 naming each problem (dashboard, panel, metric)."""
    from gpt_observatory.dashboards.artefacts import ROOT
    from gpt_observatory.dashboards.check import run

    findings = run(root or ROOT, promtool=None if no_promtool else promtool)
    for finding in findings:
        typer.echo(f"error: {finding}", err=True)
    if findings:
        raise typer.Exit(1)
    typer.echo("dashboards, rules and collector config: OK")


@app.command()
def verify(
    prometheus: Annotated[str, typer.Option(help="Base URL of the Prometheus to query, e.g. http://127.0.0.1:9090.")],
    expect: Annotated[
        list[str] | None,
        typer.Option(help="An event that happened (e.g. gpu, rate_limited): queries needing it must return data. "
                          "Repeat for several."),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write every outcome as JSON here.")] = None,
) -> None:
    """Evaluate every panel query, variable and rule on a live Prometheus.

    Exit 1 when a query that should have data has none; queries waiting for an event that was not
    expected (a GPU, a rate limit, ...) are listed, not failed."""
    from gpt_observatory.dashboards.verify import evaluate, live_queries, report

    outcomes = evaluate(prometheus, live_queries())
    failures = report(outcomes, set(expect or ()), json_out)
    for line in failures.lines:
        typer.echo(line)
    if failures.unexpected:
        raise typer.Exit(1)
