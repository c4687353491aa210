"""``observatory pipeline``: run the model pipeline, move the champion alias, read the decision history.

Stores come from the environment: ``MLFLOW_TRACKING_URI`` (default SQLite under the state folder),
``PREFECT_API_URL`` (default Prefect's local ephemeral API), ``OBSERVATORY_PIPELINE_*`` settings.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from gpt_observatory.flows.history import Decision

app = typer.Typer(help="MLOps pipeline: train → register → evaluate → [approval] → promote, rollback, decision history.")

MODEL_HELP = "Registered model name (default: the model_name setting, 'tiny-gpt')."
SET_HELP = "Override a pipeline setting for this run, as KEY=VALUE (repeatable), e.g. --set steps=50."


def _embedded_prefect() -> None:
    """Without ``PREFECT_API_URL`` Prefect starts a temporary local server; its first start
    creates a database, which on a busy small machine takes longer than Prefect's 20 s default
    wait. Set before Prefect is imported (it reads settings once); an explicit value wins."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


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

    from gpt_observatory import telemetry
    from gpt_observatory.telemetry import ConfigError

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
        colour = {"promoted": "green", "approved": "green", "rejected": "yellow", "rejected_by_approver": "yellow",
                  "approval_timeout": "yellow", "rolled_back": "cyan", "inconclusive": "magenta"}[d.decision]
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

    _embedded_prefect()
    from gpt_observatory.flows.pipeline import pipeline

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
    _embedded_prefect()
    from gpt_observatory.flows.promotion import promote as promote_flow

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
    _embedded_prefect()
    from gpt_observatory.flows.promotion import rollback as rollback_flow

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

    from gpt_observatory.flows import history as records
    from gpt_observatory.flows.registry import CHALLENGER, CHAMPION, PREVIOUS, Registry
    from gpt_observatory.flows.settings import load_settings
    from gpt_observatory.flows.stores import connect

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
    for column in ("when (UTC)", "decision", "champion"):
        table.add_column(column, no_wrap=True)
    table.add_column("reason (gate figures) · flow run", ratio=1, overflow="fold")
    for d in decisions:
        run = d.flow_run_name or d.flow_run_id
        table.add_row(d.at[5:19].replace("T", " "), f"{d.decision} v{d.version}",
                      f"v{d.from_version or '-'} → v{d.champion or '-'}",
                      d.reason + (f" [dim]· {run}[/]" if run else ""))
    Console().print(table)


@app.command()
def pending(as_json: bool = typer.Option(False, "--json", help="Print the waiting runs as a JSON list.")) -> None:
    """Promotions waiting for approval (approval = "required"): flow run, model, versions, figures, since."""
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    _embedded_prefect()
    from gpt_observatory.flows.approval import pending as waiting
    from gpt_observatory.flows.approval import side_by_side

    runs = waiting()
    if as_json:
        typer.echo(json.dumps([asdict(p) for p in runs], indent=2, default=str))
        return
    if not runs:
        Console().print("no promotion is waiting for approval")
        return
    table = Table(title="promotions waiting for approval")
    for column in ("flow run", "model", "candidate", "champion", "waiting since (UTC)"):
        table.add_column(column, no_wrap=True)
    table.add_column("figures (candidate / champion)", ratio=1, overflow="fold")
    for p in runs:
        figures = "; ".join(f"{metric} {mine} / {theirs}" for metric, mine, theirs in side_by_side(p.figures))
        table.add_row(f"{p.run_id}\n[dim]{p.run_name}[/]", p.model, f"v{p.version}", f"v{p.champion or '-'}",
                      p.since[:19].replace("T", " "), figures)
    Console().print(table)


def _answer(run_id: str, approve: bool, approver: str, reason: str) -> None:
    from rich.console import Console

    _embedded_prefect()
    from gpt_observatory.flows.approval import NotPending, answer

    try:
        answer(run_id, approve, approver, reason)
    except NotPending as e:
        Console(stderr=True).print(f"[red]not pending:[/] {e}")
        raise typer.Exit(1) from None
    Console().print(f"{'approved' if approve else 'rejected'} flow run {run_id}: it resumes and records the decision")


APPROVER_HELP = "Who decides (recorded in the alias history)."


@app.command()
def approve(
    run_id: str = typer.Argument(..., help="The waiting flow run (observatory pipeline pending)."),
    approver: str = typer.Option(..., "--approver", help=APPROVER_HELP),
    reason: str = typer.Option(..., "--reason", help="Why (recorded in the alias history)."),
) -> None:
    """Approve a waiting promotion: the flow run resumes and moves 'champion' (if it still is the one judged)."""
    _answer(run_id, True, approver, reason)


@app.command()
def reject(
    run_id: str = typer.Argument(..., help="The waiting flow run (observatory pipeline pending)."),
    approver: str = typer.Option(..., "--approver", help=APPROVER_HELP),
    reason: str = typer.Option(..., "--reason", help="Why (recorded in the alias history)."),
) -> None:
    """Reject a waiting promotion: the flow run resumes and records it; 'champion' stays."""
    _answer(run_id, False, approver, reason)


CANARY_SET_HELP = ("Override a canary setting (min_requests, max_error_rate, max_p95_duration_s, on_inconclusive, "
                   "guard_duration_s, ...; see CanarySettings in gpt_observatory.flows.settings) or a pipeline "
                   "setting, as KEY=VALUE (repeatable).")


def _split(pairs: list[str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set`` pairs as (canary settings, pipeline overrides), by the key's owner."""
    from gpt_observatory.flows.settings import CanarySettings

    given = _overrides(pairs)
    live = {k: v for k, v in given.items() if k in CanarySettings.model_fields}
    return live, {k: v for k, v in given.items() if k not in live}


@app.command()
def canary(
    model: str = typer.Option(None, "--model", help=MODEL_HELP),
    version: str = typer.Option(None, "--version", help="Version to put on canary (sets the 'challenger' alias; "
                                                         "default: the version the alias already names)."),
    prometheus_url: str = typer.Option(None, "--prometheus-url", help="Prometheus scraping the gateways "
                                       "(default: the prometheus_url canary setting, http://127.0.0.1:9090)."),
    window: float = typer.Option(None, "--window", help="Seconds of live traffic to judge (default: 300)."),
    step: float = typer.Option(None, "--step", help="Seconds between looks at Prometheus (default: 15)."),
    settings: list[str] = typer.Option(None, "--set", help=CANARY_SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
) -> None:
    """Judge the challenger on live traffic (gateways started with --canary-share) against the champion:
    promote, reject or record inconclusive; every outcome ends the canary (challenger share back to 0).
    A promotion is then guarded for guard_duration_s (rolled back on an SLO breach)."""
    from rich.console import Console

    from gpt_observatory.flows.canary import canary as canary_flow

    live, overrides = _split(settings)
    out = _run(canary_flow, model_name=model, version=version, prometheus_url=prometheus_url, window_s=window,
               step_s=step, canary_settings=live, overrides=overrides)
    if as_json:
        typer.echo(json.dumps(out.as_dict(), indent=2, default=str))
        return
    _print_decision(out.decision, False)
    if out.guard is not None:
        Console().print(f"guard: {out.guard.verdict} after {out.guard.watched_s:.0f}s — {out.guard.reason}")
        if out.guard.decision is not None:
            _print_decision(out.guard.decision, False)


@app.command()
def guard(
    model: str = typer.Option(None, "--model", help=MODEL_HELP),
    version: str = typer.Option(None, "--version", help="Champion version to watch (default: the current one)."),
    prometheus_url: str = typer.Option(None, "--prometheus-url", help="Prometheus scraping the gateways."),
    duration: float = typer.Option(None, "--duration", help="Seconds to watch (default: guard_duration_s, 300)."),
    window: float = typer.Option(None, "--window", help="Trailing seconds judged at each step (default: 60)."),
    step: float = typer.Option(None, "--step", help="Seconds between looks at Prometheus (default: 15)."),
    settings: list[str] = typer.Option(None, "--set", help=CANARY_SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
) -> None:
    """Watch the champion on live traffic; on an SLO breach roll back to the previous champion,
    recording the figures."""
    from dataclasses import asdict

    from rich.console import Console

    from gpt_observatory.flows.canary import guard as guard_flow

    live, overrides = _split(settings)
    out = _run(guard_flow, model_name=model, version=version, prometheus_url=prometheus_url, duration_s=duration,
               window_s=window, step_s=step, canary_settings=live, overrides=overrides)
    if as_json:
        typer.echo(json.dumps(asdict(out), indent=2, default=str))
        return
    Console().print(f"guard {out.model} v{out.version}: {out.verdict} after {out.watched_s:.0f}s — {out.reason}")
    if out.decision is not None:
        _print_decision(out.decision, False)
