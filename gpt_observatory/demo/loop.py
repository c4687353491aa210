"""``observatory demo``: the whole loop on embedded defaults, with nothing to start by hand.

The pipeline trains v1 and makes it the champion while the gateway (``observatory serve``, with
the development IdP) starts; v2 is trained, registered as the challenger and evaluated offline,
then judged: on shadow traffic (the gateway mirrors every request to the challenger after the
champion answered; the ``canary`` flow reads both sides from a Prometheus that scrapes the gateway)
when Prometheus is installed, a pass then waiting for approval, which the demo gives through the
CLI; else by the offline gates. The gateway follows the champion alias; a scripted client sends
good, streaming, unauthenticated, forged-token and over-limit requests; the gateway's second
catalog model, a pool of two local replicas, is loaded while one replica is killed and started
again (``fleet``); the ``trial`` tenant is run into its budget (``billing``: the gateway has
tenants on three tiers, prices and its usage ledger on); the summary is read back from the telemetry
the processes really emitted (``<state>/telemetry/*.jsonl`` and the gateway's ``/metrics``), and the
cost table from the usage ledger, by ``observatory usage`` (``costs``).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from gpt_observatory import telemetry
from gpt_observatory.demo import billing as _demo_billing
from gpt_observatory.demo import canary as _demo_canary
from gpt_observatory.demo import client as _demo_client
from gpt_observatory.demo import costs as _demo_costs
from gpt_observatory.demo import fleet as _demo_fleet
from gpt_observatory.demo import pipeline as _demo_pipeline
from gpt_observatory.demo import stack as _demo_stack
from gpt_observatory.demo.approver import ApprovalReport, Approver
from gpt_observatory.demo.readback import SERVICE_INSTANCE_ID, Scrape, instance_of, is_api_server_span, wait_for_spans
from gpt_observatory.demo.stack import FLEET_MODEL, MODEL, SCOPE, Gateway
from gpt_observatory.demo.summary import (
    approval_section,
    build,
    dumps,
    fleet_section,
    render,
    shadow_section,
    show_slowest,
)
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.backends.jsonl import telemetry_dir


class _Step:
    note = ""


class _Steps:
    """Progress: a spinner while a step runs, then one line with its duration and outcome."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @contextmanager
    def __call__(self, title: str) -> Iterator[_Step]:
        step, start = _Step(), time.monotonic()
        try:
            with self.console.status(f"{title}…"):
                yield step
        except BaseException:
            self.console.print(f"[red]✗[/] {title} [dim]({time.monotonic() - start:.1f}s)[/]")
            raise
        note = f" [dim]—[/] {step.note}" if step.note else ""
        self.console.print(f"[green]✓[/] {title} [dim]({time.monotonic() - start:.1f}s)[/]{note}")


def _telemetry_overrides() -> dict[str, Any]:
    """Quiet console (the demo shows progress) and traces always in the jsonl file the summary reads."""
    overrides: dict[str, Any] = {"console_logs": False}
    chosen = telemetry.settings.load().exporters("traces")
    if "jsonl" not in chosen:
        overrides["traces_exporter"] = [*chosen, "jsonl"]
    return overrides


def _settled(gateway: Gateway, expected: int, timeout: float = 15.0) -> Scrape:
    """A scrape taken once the gateway has finished (and counted) every request sent."""
    deadline = time.monotonic() + timeout
    while True:
        scrape = Scrape(gateway.metrics_text())
        done = scrape.total(names.GATEWAY_REQUESTS) >= expected
        if (done and scrape.total(names.HTTP_SERVER_ACTIVE_REQUESTS) == 0) or time.monotonic() > deadline:
            return scrape
        time.sleep(0.2)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _stops_cleanly() -> Iterator[None]:
    """SIGTERM (and SIGINT, even when a non-interactive shell started us with it ignored) raise
    KeyboardInterrupt, so the gateway, Prometheus and the IdP are stopped on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(json_out: str | None = None, keep_serving: bool = False) -> dict[str, Any]:
    """Run the demo; print the summary (and write it as JSON to ``json_out``); return it."""
    with _stops_cleanly():
        return _run(json_out, keep_serving)


def _run(json_out: str | None, keep_serving: bool) -> dict[str, Any]:
    started, since_ns = time.monotonic(), time.time_ns()
    console = Console(stderr=True)
    state = telemetry.state_dir()
    _demo_stack.prepare_environment(state)
    handle = telemetry.configure("observatory-demo", **_telemetry_overrides())
    step = _Steps(console)
    console.rule("[bold]Observatory demo")
    console.print(f"state folder: {state}  (delete it to start over)")
    from gpt_observatory.serving_hooks.idp import DevIdP

    gateway: Gateway | None = None
    with ExitStack() as cleanup:
        cleanup.callback(handle.shutdown)
        idp = cleanup.enter_context(DevIdP(state, audience=_demo_stack.AUDIENCE))
        try:
            no_canary = _demo_canary.unavailable()
            with step("embedded stores and gateway: MLflow (SQLite), Prefect (local API), IdP, observatory serve") as s:
                prefect_ready = _demo_pipeline.start_prefect()  # a first start migrates Prefect's database
                uri = _demo_pipeline.prepare_store(MODEL)
                creds, keys_file = _demo_stack.make_credentials(state, idp.issuer)
                metering = _demo_billing.write_files(state / "demo", state)
                spend = _demo_billing.Spend(metering.prices)
                idp.register_client(creds.client_id, creds.client_secret, "demo", [SCOPE])
                replicas = _demo_fleet.start_replicas(state / "demo")
                for replica in replicas:
                    cleanup.callback(replica.stop)
                catalog = _demo_fleet.catalog_toml(replicas, None if no_canary else _demo_canary.SHADOW_SHARE)
                # it boots, and waits for a champion, while Prefect starts and the pipeline runs
                gateway = _demo_stack.start_gateway(state, uri, creds, keys_file, catalog, metering.serve_args())
                cleanup.callback(gateway.stop)
                prometheus = None
                if no_canary is None:
                    prometheus = _demo_canary.Prometheus.start(state / "demo" / "prometheus", gateway.address)
                    cleanup.callback(prometheus.stop)
                prefect_ready()
                s.note = f"MLflow {uri}; IdP {idp.issuer}" + (f"; Prometheus {prometheus.url}" if prometheus else "")
            with step("v1: train → register → evaluate → promote (pipeline flow)") as s:
                champion = _demo_pipeline.first_champion(MODEL)
                s.note = f"champion v{champion.version}: {champion.reason}"
            with step("v2: train → register as challenger → evaluate offline") as s:
                challenger = _demo_pipeline.train_challenger(MODEL)
                loss = f": held-out loss {challenger.heldout_loss:.4f}" if challenger.heldout_loss else ""
                s.note = f"v{challenger.version}{loss}"
            with step(f"gateway (observatory serve) serving {MODEL}@champion") as s:
                s.note = f"v{gateway.wait_serving(champion.version)['model']['version']} on {gateway.url}"
            report = _demo_client.ClientReport()
            how = "on shadow traffic, then approval" if prometheus else "by the offline gates"
            approval = ApprovalReport()
            with step(f"judge v{challenger.version} against v{champion.version} {how}") as s:
                verdict = None
                if challenger.version == champion.version:  # a re-run on a state folder that has it all
                    verdict = _demo_pipeline.Verdict("unchanged", challenger.version, champion.version,
                                                     f"v{champion.version} already is the champion", "nothing to judge")
                elif prometheus is not None:
                    verdict, failure, approval = _judge_live(prometheus, challenger, gateway, idp, report, console, spend)
                    if verdict is None:
                        no_canary = f"the live canary failed: {failure}"
                if verdict is None:
                    verdict = _demo_pipeline.judge_offline(MODEL, challenger, no_canary or "")
                s.note = f"{verdict.decision} by {verdict.judged_by}: {verdict.reason}"
            with step("gateway follows the champion alias") as s:
                ready = gateway.wait_serving(verdict.champion)
                s.note = f"serving v{ready['model']['version']}"
            from gpt_observatory.demo.gpu import GpuProbe

            gpu = GpuProbe()
            with step("scripted client: good, streaming, unauthenticated, forged, over-limit") as s:
                _demo_client.run(gateway.v1, creds, idp, report, spend)
                s.note = f"{report.total} requests in all"
            with step(f"budget: tenant {_demo_billing.TRIAL!r} until the gateway refuses it") as s:
                budget = _demo_billing.exhaust_budget(gateway.v1, creds.trial_key, spend, report)
                refused = budget.refused
                s.note = (f"{budget.admitted} admitted ({_demo_billing.money(budget.spent_micro)} of {budget.budget}), then "
                          f"{refused.get('status')} {refused.get('code')}; resets {refused.get('reset')}")
            with step(f"fleet: {FLEET_MODEL} on {len(replicas)} replicas, {_demo_fleet.KILLED} killed mid-load, "
                      "then restarted") as s:
                fleet = _demo_fleet.run(gateway, idp, replicas, spend=spend)
                for status, n in fleet.statuses.items():
                    report.note("fleet traffic (JWT)", status, n)
                s.note = (f"{sum(fleet.statuses.values())} requests, {fleet.failed_unstarted} failed before a byte; "
                          f"out {fleet.ejected_after_s} s after the kill, back {fleet.readmitted_after_s} s after "
                          "the restart")
            with step("reading the telemetry back") as s:
                scrape = _settled(gateway, report.total)
                instance = scrape.resource(SERVICE_INSTANCE_ID)
                readyz = gateway.model_status()  # the champion's part of /readyz
                if not keep_serving:
                    gateway.stop()  # SIGTERM: the gateway flushes its telemetry and ships its ledger spool
                handle.force_flush()
                traces = telemetry_dir(handle.settings) / "traces.jsonl"
                spans = wait_for_spans(traces, since_ns, lambda sp: sum(
                    1 for x in sp if instance_of(x) == instance and is_api_server_span(x)) >= report.total)
                seen = spend.as_dict()
                # a stopped gateway shipped its spool on the way out; one still serving ships it soon
                usage = _demo_costs.read(metering.ledger, _demo_costs.since_text(since_ns / 1e9),
                                         sum(t["requests"] for t in seen.values()), 15.0 if keep_serving else 0.0)
                usage["seen_by_callers"] = seen
                s.note = f"{len(spans)} spans; {sum(r['requests'] for r in usage['rows'])} ledger rows"
            summary = build(
                scrape=scrape, spans=spans, gateway_instance=instance, readyz=readyz, client=report.as_dict(),
                model={"name": MODEL, "champion_before": champion.version, "challenger": challenger.version,
                       "decision": verdict.decision, "reason": verdict.reason, "judged_by": verdict.judged_by,
                       "champion_after": verdict.champion},
                shadow=shadow_section(verdict, scrape), approval=approval_section(verdict, approval),
                fleet=fleet_section(fleet, scrape), budget=budget.as_dict(), usage=usage,
                gpu=gpu.readings(scrape.total(names.GEN_AI_OUTPUT_TOKENS)),
                files={s: str(traces.with_name(f"{s}.jsonl")) for s in ("traces", "metrics", "logs")},
                tracking_uri=uri,
                gateway={"url": gateway.url, "log": str(gateway.log), "prometheus": prometheus.url if prometheus else None},
                wall_time_s=time.monotonic() - started,
            )
            render(summary, Console())
            show_slowest(summary, Console(width=max(Console().width, 160)))
            _demo_costs.render(usage, _demo_billing.tiers(), Console())
            if json_out:
                Path(json_out).write_text(dumps(summary))
                console.print(f"summary written to {json_out}")
            if keep_serving:
                _serve_until_interrupted(console, gateway, creds, state)
            return summary
        except KeyboardInterrupt:
            console.print("interrupted")
            raise SystemExit(130) from None
        except Exception as e:
            console.print(f"[red]demo failed:[/] {type(e).__name__}: {e}")
            if gateway is not None:
                console.print(f"gateway log: {gateway.log}")
            raise SystemExit(1) from None


def _judge_live(
    prometheus: _demo_canary.Prometheus, challenger: _demo_pipeline.Challenger, gateway: Gateway, idp: Any,
    report: _demo_client.ClientReport, console: Console, spend: _demo_billing.Spend,
) -> tuple[_demo_pipeline.Verdict | None, str, ApprovalReport]:
    """The canary flow on shadow traffic, a pass answered by the approver; (None, why, …) when it
    could not run, so the demo can decide offline instead."""
    traffic = _demo_canary.LiveTraffic(gateway.v1, idp, spend=spend)
    approver = Approver(console, challenger.version)
    try:
        prometheus.wait_ready()
        gateway.wait_challenger(challenger.version)
        with traffic, approver:
            return _demo_pipeline.judge_live(prometheus.url, challenger), "", approver.report
    except Exception as e:  # the canary flow deletes the challenger alias when it stops without a verdict
        return None, f"{type(e).__name__}: {e}", approver.report
    finally:
        for status, n in traffic.statuses.items():
            report.note("canary traffic (JWT)", status, n)


def _serve_until_interrupted(console: Console, gateway: Gateway, creds: _demo_stack.Credentials, state: Path) -> None:
    console.rule("[bold]still serving")
    curl = (f"curl -s {gateway.v1}/chat/completions -H 'Authorization: Bearer {creds.api_key}' "
            f"-H 'content-type: application/json' "
            f"-d '{{\"model\": \"{MODEL}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'")
    console.print(f"gateway: {gateway.v1} (OpenAI-compatible; Ctrl-C stops it)\n"
                  f"credentials (API keys, OAuth client of issuer {creds.issuer}): "
                  f"{state / 'demo' / 'credentials.json'}\ntry: {curl}", soft_wrap=True, markup=False)
    try:
        while gateway.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping the gateway")
