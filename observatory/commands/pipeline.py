"""``observatory pipeline``: run the model pipeline, move the champion alias, read the decision history.

Stores come from the environment: ``MLFLOW_TRACKING_URI`` (default SQLite under the state folder),
``PREFECT_API_URL`` (default Prefect's local ephemeral API), ``OBSERVATORY_PIPELINE_*`` settings.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from flows.history import Decision

app = typer.Typer(help="MLOps pipeline: train → register → evaluate → promote, rollback, decision history.")

MODEL_HELP = "Registered model name (default: the model_name setting, 'tiny-gpt')."
SET_HELP = "Override a pipeline setting for this run, as KEY=VALUE (repeatable), e.g. --set steps=50."


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        out[key.strip()] = value.strip()
    return out


def _run(fn: Any, **kwargs: Any) -> Any:
    """Run a flow with telemetry configured first (so Prefect records its flow-run spans);
    print a failure as one line and exit non-zero."""
    from rich.console import Console

    import telemetry
    from telemetry import ConfigError

    handle = telemetry.configure()
    try:
        return fn(**kwargs)
    except ConfigError as e:
        Console(stderr=True).print(f"[red]configuration error:[/] {e}")
        raise typer.Exit(2) from None
    except Exception as e:
        Console(stderr=True).print(f"[red]{type(e).__name__}:[/] {e}")
        raise typer.Exit(1) from None
    finally:
        handle.force_flush()


def _print_decision(d: Decision | None, as_json: bool) -> None:
    from dataclasses import asdict

    from rich.console import Console

    if as_json:
        typer.echo(json.dumps(asdict(d) if d else None, indent=2))
    elif d is None:
        Console().print("nothing to do: that version already is the champion")
    else:
        colour = {"promoted": "green", "rejected": "yellow", "rolled_back": "cyan"}[d.decision]
        Console().print(f"[{colour}]{d.decision}[/] {d.model} v{d.version} "
                        f"(champion v{d.from_version or '-'} → v{d.champion or '-'}): {d.reason}")


@app.command()
def run(
    model: str = typer.Option(None, "--model", help=MODEL_HELP),
    settings: list[str] = typer.Option(None, "--set", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run the whole pipeline once (idempotent: an unchanged model registers nothing)."""
    from rich.console import Console

    from flows.flows import pipeline

    result = _run(pipeline, model_name=model, overrides=_overrides(settings))
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    what = "registered" if result.registered else "already registered"
    Console().print(f"{result.model} v{result.version} ({what}): [bold]{result.decision or 'unchanged'}[/] "
                    f"— {result.reason}\nchampion: v{result.champion}  store: {result.tracking_uri}")


@app.command()
def promote(
    model: str = typer.Option(None, "--model", help=MODEL_HELP),
    version: str = typer.Option(None, "--version", help="Version to judge (default: the 'challenger' alias)."),
    settings: list[str] = typer.Option(None, "--set", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
) -> None:
    """Judge a version against the champion through the gates; move 'champion' if it passes."""
    from flows.flows import promote as promote_flow

    decision = _run(promote_flow, model_name=model, version=version, overrides=_overrides(settings))
    _print_decision(decision, as_json)


@app.command()
def rollback(
    model: str = typer.Option(None, "--model", help=MODEL_HELP),
    to_version: str = typer.Option(None, "--to-version", help="Version to restore (default: the previous champion)."),
    reason: str = typer.Option(None, "--reason", help="Why, recorded with the decision."),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
) -> None:
    """Point 'champion' back at the previous champion and record the decision."""
    from flows.flows import rollback as rollback_flow

    decision = _run(rollback_flow, model_name=model, to_version=to_version, reason=reason)
    _print_decision(decision, as_json)


@app.command()
def history(
    model: str = typer.Option(None, "--model", help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the decisions as a JSON list."),
    limit: int = typer.Option(0, "--limit", min=0, help="Show only the last N decisions (0: all)."),
) -> None:
    """Every promotion decision, oldest first, read from the registry (any MLflow client can)."""
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    from flows import history as records
    from flows.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry
    from flows.settings import load_settings
    from flows.stores import connect

    settings = load_settings(model_name=model)
    client = connect(settings)
    registry = Registry(client, settings.model_name)
    if not registry.exists():
        Console(stderr=True).print(f"no registered model {settings.model_name!r} at {client.tracking_uri}")
        raise typer.Exit(1)
    decisions = records.read(client, settings.model_name)
    decisions = decisions[-limit:] if limit else decisions
    if as_json:
        typer.echo(json.dumps([asdict(d) for d in decisions], indent=2))
        return
    aliases = {a: registry.alias(a) for a in (CHAMPION, CHALLENGER, PREVIOUS)}
    table = Table(title=f"{settings.model_name}: promotion decisions",
                  caption="  ".join(f"{a}: v{v}" for a, v in aliases.items() if v))
    for column in ("when (UTC)", "decision", "version", "champion", "loss", "p95 ms", "reason", "flow run"):
        table.add_column(column, overflow="fold")
    for d in decisions:
        f = d.figures
        loss = f"{f['challenger_loss']:.4f}" if "challenger_loss" in f else ""
        if "champion_loss" in f:
            loss += f" vs {f['champion_loss']:.4f}"
        p95 = f"{f['challenger_p95_s'] * 1e3:.1f}" if "challenger_p95_s" in f else ""
        table.add_row(d.at.replace("T", " ")[:19], d.decision, f"v{d.version}",
                      f"v{d.from_version or '-'} → v{d.champion or '-'}", loss, p95, d.reason,
                      d.flow_run_name or d.flow_run_id or "")
    Console().print(table)
