"""The demo's summary: figures from the gateway's scraped metrics and the spans in the traces file,
as a dict (``--json``) and as a table."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gpt_observatory.demo.billing import budget_text
from gpt_observatory.demo.readback import (
    Scrape,
    bucket_quantile,
    duration_ms,
    instance_of,
    is_api_server_span,
    rank_quantile,
    shared_trace,
    span_key,
)
from gpt_observatory.telemetry import names

OUTCOMES = {"200": "ok", "401": "unauthenticated", "403": "forbidden", "429": "rate_limited"}


def requests_section(scrape: Scrape, client: dict[str, Any]) -> dict[str, Any]:
    by_status = {k: int(v) for k, v in sorted(scrape.by(names.GATEWAY_REQUESTS, names.HTTP_RESPONSE_STATUS_CODE).items())}
    rejections = scrape.by(names.GATEWAY_REJECTIONS, names.REJECTION_REASON)
    by_outcome: Counter[str] = Counter()
    for status, n in by_status.items():
        by_outcome[OUTCOMES.get(status, f"http {status}")] += n
    # a 429 is a rate limit or a spent budget (insufficient_quota): the rejection reason tells them apart
    over_budget = min(int(rejections.get(names.REJECTION_BUDGET, 0)), by_outcome["rate_limited"])
    if over_budget:
        by_outcome["rate_limited"] -= over_budget
        by_outcome["over_budget"] = over_budget
    by_outcome = Counter({k: n for k, n in by_outcome.items() if n})
    return {
        "total": sum(by_status.values()),
        "by_outcome": dict(by_outcome),
        "by_status": by_status,
        "rejections_by_reason": {k: int(v) for k, v in sorted(rejections.items())},
        "client_sent": client,  # the scripted client's own notes, for comparison only
    }


def latency_section(gateway_spans: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [duration_ms(s) for s in gateway_spans
          if is_api_server_span(s) and s["attributes"].get(names.HTTP_RESPONSE_STATUS_CODE) == 200]
    return {"p50": _round(rank_quantile(0.5, ok)), "p95": _round(rank_quantile(0.95, ok)), "count": len(ok),
            "source": "gateway SERVER spans (HTTP 200) in traces.jsonl"}


def ttft_section(scrape: Scrape) -> dict[str, Any]:
    count, total, buckets = scrape.histogram(names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN)
    ms = lambda v: _round(v * 1e3 if v is not None else None)  # noqa: E731
    return {"mean": ms(total / count if count else None), "p50": ms(bucket_quantile(0.5, buckets)),
            "p95": ms(bucket_quantile(0.95, buckets)), "count": int(count),
            "source": f"{names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN.name} histogram (/metrics)"}


def throughput_section(scrape: Scrape) -> tuple[float | None, int]:
    """Output tokens per second of generation time, and the output tokens counted."""
    tokens = scrape.total(names.GEN_AI_OUTPUT_TOKENS)
    _, seconds, _ = scrape.histogram(names.GEN_AI_SERVER_REQUEST_DURATION)
    return (_round(tokens / seconds) if seconds else None), int(tokens)


SHADOW_FIGURES = ("requests", "errors", "p95_s", "p95_ttft_s", "tokens_per_s", "exact_match_rate", "length_ratio")


def shadow_section(verdict: Any, scrape: Scrape) -> dict[str, Any] | None:
    """Both sides' figures on the mirrored requests, as the canary flow judged them (from Prometheus)
    and as the gateway counted the mirrors (``/metrics``); None when the challenger was not shadowed."""
    from gpt_observatory.demo.pipeline import JUDGED_ON_SHADOW

    if verdict.judged_by != JUDGED_ON_SHADOW:
        return None
    figures = verdict.figures
    sides = {side: {k: figures.get(f"{side}_{k}") for k in SHADOW_FIGURES if f"{side}_{k}" in figures}
             for side in ("challenger", "champion")}
    return {**sides, "compared": int(scrape.total(names.SHADOW_COMPARISONS)),
            "exact": int(scrape.total(names.SHADOW_COMPARISONS, **{names.SHADOW_MATCH: "exact"})),
            "dropped": int(scrape.total(names.SHADOW_DROPPED)),
            "source": "canary flow figures (Prometheus) and observatory.shadow.* (/metrics)"}


def fleet_section(report: Any, scrape: Scrape) -> dict[str, Any]:
    """The pool model's phase: what its callers saw (``report``) and, per replica, what the gateway
    counted (``/metrics``): attempts by outcome, ejections; and the pool's retries."""
    attempts = scrape.by(names.FLEET_REPLICA_REQUESTS, names.FLEET_REPLICA, names.FLEET_OUTCOME)
    per: dict[str, dict[str, int]] = {}
    for key, n in sorted(attempts.items()):
        replica, outcome = key.split("/", 1)
        per.setdefault(replica, {})[outcome] = int(n)
    ejections = {k: int(v) for k, v in sorted(scrape.by(names.FLEET_REPLICA_EJECTIONS, names.FLEET_REPLICA).items())}
    return {**report.as_dict(), "attempts_by_replica": per, "ejections_by_replica": ejections,
            "retries": int(scrape.total(names.FLEET_RETRIES)),
            "source": "the client's own record, /readyz, and observatory.fleet.* (/metrics)"}


def approval_section(verdict: Any, report: Any) -> dict[str, Any] | None:
    """The approval the flow waited for and how it was answered; None when none was asked."""
    if report.run_id is None and report.error is None:
        return None
    return {**report.as_dict(), "decision": verdict.decision if verdict else None,
            "recorded_approver": verdict.approver if verdict else None,
            "waited_s": verdict.waited_s if verdict else None}


def _tool(name: str) -> str:
    """``name`` in this interpreter's bin folder when it is there (the venv need not be activated)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def slowest_trace(gateway_spans: list[dict[str, Any]], telemetry_folder: str) -> dict[str, Any] | None:
    """The slowest gateway request and the ``observatory trace`` command that shows it."""
    requests = [s for s in gateway_spans if is_api_server_span(s)]
    if not requests:
        return None
    slowest = max(requests, key=duration_ms)
    trace_id = slowest["trace_id"]
    return {"trace_id": trace_id, "name": slowest["name"], "duration_ms": _round(duration_ms(slowest)),
            "command": f"{_tool('observatory')} trace {trace_id} --source {telemetry_folder}"}


def ui_commands(tracking_uri: str) -> dict[str, str]:
    """How to look at this state in the MLflow and Prefect UIs."""
    tool = _tool
    if tracking_uri.startswith(("http://", "https://")):
        mlflow = f"open {tracking_uri}"
    else:
        mlflow = f"{tool('mlflow')} ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    api = PREFECT_API_URL.value()
    if api:
        prefect = f"open {api.removesuffix('/').removesuffix('/api')}"
    else:  # the local API's database lives in PREFECT_HOME; a server started on it shows the runs
        prefect = (f"PREFECT_HOME={PREFECT_HOME.value()} {tool('prefect')} server start "
                   f"--host 127.0.0.1 --port 4200  # then open http://127.0.0.1:4200")
    return {"mlflow": mlflow, "prefect": prefect}


def build(
    *,
    scrape: Scrape,
    spans: list[dict[str, Any]],
    gateway_instance: str | None,
    readyz: dict[str, Any],
    client: dict[str, Any],
    model: dict[str, Any],
    shadow: dict[str, Any] | None,
    approval: dict[str, Any] | None,
    fleet: dict[str, Any],
    budget: dict[str, Any],
    usage: dict[str, Any],
    gpu: dict[str, Any],
    files: dict[str, str],
    tracking_uri: str,
    gateway: dict[str, Any],
    wall_time_s: float,
) -> dict[str, Any]:
    """Every figure of the summary; ``spans`` are this run's spans (demo and gateway processes)."""
    gateway_spans = [s for s in spans if instance_of(s) == gateway_instance]
    tokens_per_s, output_tokens = throughput_section(scrape)
    served = Counter(str(s["attributes"][names.MODEL_VERSION]) for s in gateway_spans  # to users: no mirror
                     if names.GEN_AI_OPERATION_NAME in s["attributes"] and names.MODEL_VERSION in s["attributes"]
                     and not s["attributes"].get(names.SHADOW))
    auth = scrape.by(names.AUTH_ATTEMPTS, names.AUTH_METHOD, names.AUTH_OUTCOME)
    return {
        "wall_time_s": round(wall_time_s, 1),
        "model": model,
        "shadow": shadow,
        "approval": approval,
        "fleet": fleet,
        "budget": budget,
        "usage": usage,
        "serving_version": (readyz.get("model") or {}).get("version"),
        "served_by_version": dict(served),
        "requests": requests_section(scrape, client),
        "latency_ms": latency_section(gateway_spans),
        "ttft_ms": ttft_section(scrape),
        "tokens_per_s": tokens_per_s,
        "output_tokens": output_tokens,
        "auth_outcomes": {k: int(v) for k, v in sorted(auth.items())},
        "rate_limit_hits": int(scrape.total(names.GATEWAY_REJECTIONS, **{names.REJECTION_REASON: "rate_limit"})),
        "gpu": gpu,
        "spans_per_name": dict(sorted(Counter(span_key(s) for s in spans).items())),
        "trace": shared_trace(gateway_spans, model["name"]),
        "telemetry_files": files,
        "slowest_trace": slowest_trace(gateway_spans, str(Path(files["traces"]).parent)),
        "telemetry_dropped": int(scrape.total(names.TELEMETRY_DROPPED)),
        "gateway": gateway,
        "ui": ui_commands(tracking_uri),
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _pairs(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in mapping.items()) or "-"


def render(summary: dict[str, Any], console: Console) -> None:
    """The summary as a two-column table."""
    s = summary
    m, req, lat, ttft, gpu = s["model"], s["requests"], s["latency_ms"], s["ttft_ms"], s["gpu"]
    table = Table(title="Observatory demo: summary", show_lines=False, title_justify="left")
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    rows = [
        ("model", f"{m['name']}: champion v{m['champion_before']}, challenger v{m['challenger']}"),
        ("decision", f"{m['decision']} v{m['challenger']} by {m['judged_by']}: {m['reason']}"),
        *([("shadow traffic", _shadow_text(s["shadow"]))] if s["shadow"] else []),
        *([("approval", _approval_text(s["approval"]))] if s["approval"] else []),
        ("fleet", _fleet_text(s["fleet"])),
        ("budget", budget_text(s["budget"])),
        ("serving version", f"v{s['serving_version']} (answered by version: "
                            f"{', '.join(f'v{v} {n}' for v, n in sorted(s['served_by_version'].items()))})"),
        ("requests by outcome", f"{_pairs(req['by_outcome'])} (total {req['total']})"),
        ("rejections by reason", _pairs(req["rejections_by_reason"])),
        ("latency (ms)", f"p50 {lat['p50']}  p95 {lat['p95']}  over {lat['count']} answered requests"),
        ("time to first token (ms)", f"p50 {ttft['p50']}  p95 {ttft['p95']}  mean {ttft['mean']}  (n={ttft['count']})"),
        ("tokens/s", f"{s['tokens_per_s']} ({s['output_tokens']} output tokens)"),
        ("auth outcomes", _pairs(s["auth_outcomes"])),
        ("rate-limit hits", str(s["rate_limit_hits"])),
        ("GPU", _gpu_text(gpu)),
        ("spans per name", _pairs(s["spans_per_name"])),
        ("one trace", _trace_text(s["trace"])),
        ("telemetry files", "\n".join(s["telemetry_files"].values())),
        ("slowest request", _slowest_text(s["slowest_trace"])),
        ("gateway", f"{s['gateway']['url']} (log {s['gateway']['log']})"
                    + (f"; Prometheus {s['gateway']['prometheus']}" if s["gateway"].get("prometheus") else "")),
        ("MLflow UI", s["ui"]["mlflow"]),
        ("Prefect UI", s["ui"]["prefect"]),
        ("wall time", f"{s['wall_time_s']} s"),
    ]
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)


def _shadow_text(shadow: dict[str, Any]) -> str:
    def side(f: dict[str, Any]) -> str:
        ms = lambda v: "-" if v is None else f"{v * 1e3:.0f} ms"  # noqa: E731
        text = (f"{f.get('requests', 0):.0f} requests, {f.get('errors', 0):.0f} errors, p95 {ms(f.get('p95_s'))}, "
                f"p95 TTFT {ms(f.get('p95_ttft_s'))}, {_whole(f.get('tokens_per_s'))} tokens/s")
        if f.get("exact_match_rate") is not None:
            text += f", exact match {f['exact_match_rate']:.0%}, length ratio {f.get('length_ratio')}"
        return text

    return (f"challenger: {side(shadow['challenger'])}\nchampion:   {side(shadow['champion'])}\n"
            f"mirrors compared {shadow['compared']} ({shadow['exact']} identical), dropped {shadow['dropped']}; "
            f"no user was served by the challenger")


def _fleet_text(fleet: dict[str, Any]) -> str:
    lines = [f"{fleet['requests']} requests ({_pairs(fleet['statuses'])}); failed before a byte: "
             f"{fleet['failed_unstarted']}, cut after one: {fleet['failed_started']}; retried on another replica: "
             f"{fleet['retries']}",
             f"{fleet['killed']} killed: out after {fleet['ejected_after_s']} s ({' → '.join(fleet['states'])}), "
             f"back {fleet['readmitted_after_s']} s after its restart, then took requests again "
             f"({fleet['answered_after_restart']} answered, of the last 10 it keeps)"]
    for replica, outcomes in fleet["attempts_by_replica"].items():
        ejected = fleet["ejections_by_replica"].get(replica, 0)
        lines.append(f"{replica}: {_pairs(outcomes)}; ejected {ejected}x")
    return "\n".join(lines)


def _whole(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _approval_text(approval: dict[str, Any]) -> str:
    if approval.get("error"):
        return f"not answered by the demo ({approval['error']}); decision {approval['decision']}"
    waited = f" {approval['waited_s']:.1f} s" if approval.get("waited_s") is not None else ""
    return (f"flow run {approval['run_name']} ({approval['run_id']}) waited{waited}; answered through the CLI "
            f"by {approval['approver']}: {approval['decision']}\n" + "\n".join(f"$ {c}" for c in approval["commands"]))


def _gpu_text(gpu: dict[str, Any]) -> str:
    if not gpu["available"]:
        return str(gpu["reason"])
    lines = [f"{d['index']}: {d['name']} util {d['utilization_pct']}% mem {d['memory_used_mib']}/"
             f"{d['memory_total_mib']} MiB {d['power_w']} W {d['temperature_c']} °C" for d in gpu["devices"]]
    if gpu["energy_per_output_token_j"] is not None:
        lines.append(f"energy per output token: {gpu['energy_per_output_token_j']:.4f} J")
    return "\n".join(lines)


def _slowest_text(slowest: dict[str, Any] | None) -> str:
    if slowest is None:
        return "none found"
    return f"{slowest['name']} {slowest['duration_ms']} ms; see it with:\n{slowest['command']}"


def show_slowest(summary: dict[str, Any], console: Console) -> None:
    """The slowest request's waterfall, read back from the telemetry files as `observatory trace` does."""
    from gpt_observatory.telemetry.reading.traces import TraceNotFound, find
    from gpt_observatory.telemetry.reading.waterfall import render as waterfall

    slowest = summary.get("slowest_trace")
    if slowest is None:
        return
    try:
        trace = find(Path(summary["telemetry_files"]["traces"]).parent, slowest["trace_id"])
    except TraceNotFound as e:
        console.print(f"slowest request: {e}")
        return
    console.print(f"The slowest request: {slowest['command']}", soft_wrap=True, highlight=False)
    console.print(waterfall(trace))


def _trace_text(trace: dict[str, Any] | None) -> str:
    if trace is None:
        return "none found"
    return f"{trace['trace_id']}: " + " → ".join(f"{s['name']} ({s['service']})" for s in trace["spans"])


def dumps(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, default=str)
