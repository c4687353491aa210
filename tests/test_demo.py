"""``observatory demo --json`` on a fresh state folder, in a subprocess: every field of the
summary, figures consistent with what the scripted client sent, the challenger judged on shadow
traffic and approved through the CLI, and one trace in which the gateway, ``auth.verify`` and
inference spans share a trace id (checked against the traces file)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gpt_observatory.demo.approver import APPROVER, REASON
from gpt_observatory.demo.billing import CANARY_TENANT, FLEET_TENANT, TRIAL, TRIAL_MAX_TOKENS
from gpt_observatory.demo.canary import CANARY_SETTINGS
from gpt_observatory.demo.client import PROMPTS
from gpt_observatory.demo.pipeline import JUDGED_ON_SHADOW
from gpt_observatory.demo.stack import FLEET_MODEL, MODEL, REQUESTS_PER_MINUTE
from gpt_observatory.serving_hooks import prices, tenants
from gpt_observatory.serving_hooks.prices import cost_micro
from gpt_observatory.telemetry import names
from tests import components
from tests.reliability.demo_run import DemoRun, demo_run

FIELDS = {
    "wall_time_s", "model", "shadow", "approval", "fleet", "budget", "usage", "serving_version", "served_by_version", "requests", "latency_ms", "ttft_ms",
    "tokens_per_s", "output_tokens", "auth_outcomes", "rate_limit_hits", "gpu", "spans_per_name", "trace",
    "telemetry_files", "telemetry_dropped", "gateway", "ui", "slowest_trace",
}
CANARY, FLEET = "canary traffic (JWT)", "fleet traffic (JWT)"  # the judging traffic; the pool model's
STREAMED = len(PROMPTS)  # the streaming client sends one request per prompt
BURST_REJECTED = 3  # the burst tenant sends REQUESTS_PER_MINUTE + 3
OVER_BUDGET = f"over budget ({TRIAL})"  # the budgeted tenant's requests, up to its one refusal
MODEL_OF = {CANARY_TENANT: MODEL, FLEET_TENANT: FLEET_MODEL}  # the model each tenant calls (else MODEL)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoRun:
    return demo_run(tmp_path_factory.mktemp("demo"))


@pytest.mark.timeout(300)  # a hang guard; the wall time itself is a benchmark figure (bench/README.md)
def test_demo_writes_every_field(demo):
    assert set(demo.summary) == FIELDS
    assert demo.summary["wall_time_s"] > 0
    assert "Observatory demo: summary" in demo.stdout  # the table
    assert "✓ scripted client" in demo.stderr  # progress


def test_the_pipeline_made_v1_champion_and_judged_v2(demo):
    m = demo.summary["model"]
    assert (m["name"], m["champion_before"], m["challenger"]) == (MODEL, "1", "2")
    assert m["decision"] in ("approved", "rejected", "inconclusive", "rejected_by_approver", "approval_timeout")
    assert m["reason"]
    assert m["champion_after"] == ("2" if m["decision"] == "approved" else "1")
    assert demo.summary["serving_version"] == m["champion_after"]
    served = demo.summary["served_by_version"]
    if shutil.which("prometheus"):  # the shadow canary runs where Prometheus is installed
        assert m["judged_by"] == JUDGED_ON_SHADOW
        canary = demo.summary["requests"]["client_sent"]["canary traffic (JWT)"]
        assert set(canary) == {"200"} and canary["200"] >= CANARY_SETTINGS["min_requests"]
        after = sum(demo.summary["requests"]["client_sent"][k].get("200", 0)
                    for k in demo.summary["requests"]["client_sent"] if k not in (CANARY, FLEET))
        assert sum(served.values()) == canary["200"] + after
        # No user was served by the challenger while it was judged: a user's answer from v2 (not a
        # mirror) begins only once the decision moved the alias; the scripted client, after it, gets v2.
        user_v2 = [sp for sp in traced_spans(demo) if sp["name"] == f"chat {MODEL}"
                   and sp["resource"][names.SERVICE_NAME] == "observatory-gateway"
                   and str(sp["attributes"].get(names.MODEL_VERSION)) == "2" and not sp["attributes"].get(names.SHADOW)]
        if m["champion_after"] == "2":
            # the approved decision's span comes after its recording; the alias moved in the move-champion
            # task just before it (the gateway, polling, may serve v2 in between)
            decided = min(sp["start_time_unix_nano"] for sp in traced_spans(demo)
                          if sp["name"] == names.SPAN_PIPELINE_DECISION
                          and sp["attributes"].get(names.PIPELINE_DECISION) == "approved")
            moved = max(sp["start_time_unix_nano"] for sp in traced_spans(demo)
                        if sp["name"].startswith("move-champion-") and sp["start_time_unix_nano"] < decided)
            assert user_v2 and all(sp["start_time_unix_nano"] > moved for sp in user_v2)
            assert served["2"] >= after
        else:
            assert not user_v2 and served == {"1": canary["200"] + after}
    else:
        assert m["judged_by"].startswith("offline gates (")
        assert set(served) == {m["champion_after"]}


def test_the_challenger_was_judged_on_mirrored_requests(demo):
    shadow = demo.summary["shadow"]
    if not shutil.which("prometheus"):
        assert shadow is None
        return
    need = CANARY_SETTINGS["min_requests"]
    challenger, champion = shadow["challenger"], shadow["champion"]
    assert challenger["requests"] >= need and champion["requests"] >= need  # both sides of the same requests
    assert 0 <= challenger["exact_match_rate"] <= 1 and challenger["length_ratio"] > 0
    assert shadow["compared"] >= need and 0 <= shadow["exact"] <= shadow["compared"]
    assert shadow["dropped"] >= 0
    mirrors = [s for s in traced_spans(demo) if s["name"] == names.SPAN_SHADOW]
    assert len(mirrors) >= shadow["compared"]
    assert all(s["attributes"][names.SHADOW] is True and s["parent_span_id"] is None for s in mirrors)
    assert "shadow traffic" in demo.stdout and "no user was served by the challenger" in demo.stdout


def test_a_replica_killed_mid_load_failed_no_unstarted_request_and_was_ejected_then_readmitted(demo):
    fleet = demo.summary["fleet"]
    sent = demo.summary["requests"]["client_sent"][FLEET]
    assert fleet["requests"] == sum(sent.values()) > 0
    assert fleet["failed_unstarted"] == 0, fleet  # the pool retried what the dead replica held
    assert fleet["statuses"].get("200", 0) == fleet["requests"] - fleet["failed_started"]
    killed = fleet["killed"]
    assert fleet["ejected_after_s"] is not None and fleet["readmitted_after_s"] is not None
    states = fleet["states"]  # as /readyz said, from before the kill
    assert states[0] == "healthy" and states[1] in ("ejected", "unhealthy") and states[-1] == "healthy", states
    # passive ejection, as a rule; the probes may get there first on a stalled machine
    assert fleet["ejections_by_replica"].get(killed, 0) >= 1 or states[1] == "unhealthy", fleet
    assert fleet["answered_after_restart"] > 0  # the restarted process took requests again
    by_replica = fleet["attempts_by_replica"]
    assert set(by_replica) == {"replica-1", "replica-2"} and all(o.get("ok", 0) > 0 for o in by_replica.values())
    failed = {o: n for o, n in by_replica[killed].items() if o != "ok"}
    assert failed and set(failed) <= {"connect_error", "reset", "timeout", "error"}, failed
    assert "replica-2 killed: out after" in demo.stdout


def test_a_pass_waited_for_approval_and_the_demo_approved_it_through_the_cli(demo):
    m, approval = demo.summary["model"], demo.summary["approval"]
    if m["decision"] in ("rejected", "inconclusive") or not shutil.which("prometheus"):
        assert approval is None  # nothing passed: nobody was asked
        return
    assert approval["error"] is None and approval["exit_codes"] == [0, 0]
    assert approval["commands"][0] == "observatory pipeline pending"
    assert approval["commands"][1] == (f"observatory pipeline approve {approval['run_id']} --approver {APPROVER} "
                                       f"--reason '{REASON}'")
    assert (m["decision"], approval["decision"], approval["recorded_approver"]) == ("approved", "approved", APPROVER)
    assert approval["waited_s"] > 0 and m["reason"].startswith(f"approved by {APPROVER} after ")
    assert "promotions waiting for approval" in demo.stderr and approval["run_id"] in demo.stderr  # pending's table
    assert f"approved flow run {approval['run_id']}" in demo.stderr
    history = subprocess.run([components.require_binary("observatory"), "pipeline", "history", "--model", MODEL,
                              "--json"], env=demo.env, capture_output=True, text=True, timeout=120)
    assert history.returncode == 0, history.stderr
    last = json.loads(history.stdout)[-1]
    assert (last["decision"], last["version"], last["approver"], last["approval_reason"]) == (
        "approved", "2", APPROVER, REASON)


def test_requests_by_outcome_match_what_the_client_sent(demo):
    req = demo.summary["requests"]
    sent = {kind: sum(statuses.values()) for kind, statuses in req["client_sent"].items()}
    assert req["total"] == sum(sent.values())
    ok = req["total"] - 6 - 1 - BURST_REJECTED - 1
    assert req["by_status"] == {"200": ok, "401": 6, "403": 1, "429": BURST_REJECTED + 1}
    assert req["by_outcome"] == {"ok": ok, "unauthenticated": 6, "forbidden": 1, "rate_limited": BURST_REJECTED,
                                 "over_budget": 1}
    assert req["rejections_by_reason"] == {"auth": 6, "forbidden": 1, "rate_limit": BURST_REJECTED, "budget": 1}
    assert req["client_sent"]["over limit (burst)"] == {"200": REQUESTS_PER_MINUTE, "429": BURST_REJECTED}
    assert req["client_sent"][OVER_BUDGET] == {"200": demo.summary["budget"]["admitted"], "429": 1}
    # served_by_version counts the in-process model's answers; the pool model's come from its replicas
    assert sum(demo.summary["served_by_version"].values()) == ok - req["client_sent"][FLEET]["200"]


def test_latency_ttft_and_throughput_come_from_the_gateway_telemetry(demo):
    s = demo.summary
    lat, ttft = s["latency_ms"], s["ttft_ms"]
    assert lat["count"] == s["requests"]["by_status"]["200"] and 0 < lat["p50"] <= lat["p95"]
    canary = sum(s["requests"]["client_sent"].get("canary traffic (JWT)", {}).values())  # every other one streamed
    generations = [a for a in gateway_generations(demo) if a[names.GEN_AI_REQUEST_MODEL] == MODEL]
    streamed = [a for a in generations if a.get(names.GEN_AI_REQUEST_STREAM) and not a.get(names.SHADOW)]
    # two canary workers alternate between streamed and not: with both counts odd, one fewer streamed
    assert STREAMED + canary // 2 - 1 <= len(streamed) <= STREAMED + canary // 2
    # TTFT is taken at the first token produced (a stream whose first token was end-of-text has none),
    # for every generation the gateway ran: mirrored ones (flagged observatory.shadow) too
    produced = [a for a in generations if a.get(names.GEN_AI_REQUEST_STREAM)
                and a.get(names.GEN_AI_USAGE_OUTPUT_TOKENS, 0) > 0 and names.ERROR_TYPE not in a]
    assert ttft["count"] == len(produced) > 0
    assert 0 < ttft["p50"] <= ttft["p95"] and ttft["mean"] > 0
    assert s["output_tokens"] > 0 and s["tokens_per_s"] > 0


def traced_spans(demo) -> list[dict]:
    """Every span in the traces file the summary names."""
    return [json.loads(line) for line in Path(demo.summary["telemetry_files"]["traces"]).read_text().splitlines()]


def gateway_generations(demo) -> list[dict]:
    """Attributes of the gateway's GenAI spans."""
    return [span["attributes"] for span in traced_spans(demo)
            if span["scope"] == "gpt_observatory.serving_hooks.inference" and span["resource"][names.SERVICE_NAME] == "observatory-gateway"]


def test_auth_outcomes_and_rate_limit_hits(demo):
    auth = demo.summary["auth_outcomes"]
    for outcome in ("jwt/ok", "api_key/ok", "none/missing", "jwt/bad_signature", "jwt/expired", "api_key/revoked",
                    "api_key/insufficient_scope"):
        assert auth.get(outcome, 0) >= 1, f"{outcome} missing from {auth}"
    assert sum(auth.values()) == demo.summary["requests"]["total"]
    assert demo.summary["rate_limit_hits"] == BURST_REJECTED


def test_gpu_readings_or_the_reason_there_are_none(demo):
    gpu = demo.summary["gpu"]
    if gpu["available"]:
        assert gpu["devices"] and all(d["name"] and d["memory_total_mib"] for d in gpu["devices"])
    else:
        assert gpu["reason"].startswith("no GPU: ") and gpu["devices"] == []


def test_spans_per_name_cover_pipeline_and_gateway(demo):
    spans = demo.summary["spans_per_name"]
    total = demo.summary["requests"]["total"]
    assert spans["POST /v1/chat/completions"] + spans.get("POST /v1/completions", 0) == total
    assert spans[names.SPAN_AUTH_VERIFY] == total
    assert spans[f"chat {MODEL}"] >= 1 and spans[names.SPAN_PIPELINE_DECISION] >= 2
    assert spans["prefect flow run"] >= 5 and spans["prefect task run: fit"] == 2
    assert demo.summary["telemetry_dropped"] == 0


def test_the_trace_shares_one_id_across_gateway_auth_and_inference(demo):
    trace = demo.summary["trace"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace["trace_id"])
    server, auth, inference = trace["spans"]
    assert server["kind"] == "SERVER" and server["name"].startswith("POST /v1/")
    assert auth["name"] == names.SPAN_AUTH_VERIFY
    assert inference["name"] in (f"chat {MODEL}", f"text_completion {MODEL}")
    assert auth["parent_span_id"] == server["span_id"] and inference["parent_span_id"] == server["span_id"]
    # The same spans, read back from the traces file the summary names.
    in_file = {s["span_id"]: s for s in traced_spans(demo) if s["trace_id"] == trace["trace_id"]}
    assert {server["span_id"], auth["span_id"], inference["span_id"]} <= set(in_file)
    assert {in_file[s["span_id"]]["resource"][names.SERVICE_NAME] for s in trace["spans"]} == {"observatory-gateway"}


def test_files_gateway_and_ui_commands(demo):
    s = demo.summary
    assert set(s["telemetry_files"]) == {"traces", "metrics", "logs"}
    assert all(Path(p).is_file() and Path(p).parent == demo.state / "telemetry" for p in s["telemetry_files"].values())
    assert s["gateway"]["url"].startswith("http://127.0.0.1:") and Path(s["gateway"]["log"]).is_file()
    assert f"--backend-store-uri sqlite:///{demo.state / 'mlflow.db'}" in s["ui"]["mlflow"]
    home = demo.state.parent / "prefect"  # the run's PREFECT_HOME
    assert f"PREFECT_HOME={home}" in s["ui"]["prefect"] and "server start" in s["ui"]["prefect"]
    assert (home / "prefect.db").is_file()  # the flow runs the Prefect UI shows


def test_the_summary_points_at_the_slowest_request_and_observatory_trace_shows_it(demo):
    import subprocess
    import sys

    slowest = demo.summary["slowest_trace"]
    source = demo.state / "telemetry"
    assert slowest["command"].endswith(f"trace {slowest['trace_id']} --source {source}")
    durations = [(s["end_time_unix_nano"] - s["start_time_unix_nano"]) / 1e6 for s in traced_spans(demo)
                 if s["kind"] == "SERVER" and s["name"].startswith("POST /v1/")
                 and s["resource"][names.SERVICE_NAME] == "observatory-gateway"]
    assert slowest["duration_ms"] == round(max(durations), 1)
    assert f"The slowest request: {slowest['command']}" in demo.stdout
    assert f"trace {slowest['trace_id']}" in demo.stdout  # its waterfall, under the summary
    observatory = str(Path(sys.executable).parent / "observatory")
    shown = subprocess.run([observatory, "trace", slowest["trace_id"], "--source", str(source)],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"trace {slowest['trace_id']}  {slowest['name']}")


def by_tenant(rows: list[dict]) -> dict[str, dict[str, int]]:
    """The cost table's rows (one per tenant and currency: a refused request is not priced) summed per tenant."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        t = out.setdefault(r["key"], {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cost_micro": 0})
        for k in t:
            t[k] += r[k] or 0
    return out


def test_the_cost_table_is_the_ledger_and_equals_what_every_caller_saw(demo):
    """Every metered request of the run is a ledger row; its tokens are the usage its caller got, to the
    token, and its cost that usage at the prices file's price (rounded up once per request)."""
    usage = demo.summary["usage"]
    ledger, seen = by_tenant(usage["rows"]), usage["seen_by_callers"]
    judging = {CANARY_TENANT} if CANARY in demo.summary["requests"]["client_sent"] else set()  # with Prometheus
    assert set(ledger) == set(seen) == {"demo", "batch", "burst", TRIAL, FLEET_TENANT, *judging}
    assert {r["currency"] for r in usage["rows"]} == {"USD", None}  # None: the 429s, used and priced nothing
    table = prices.load(demo.state / "demo" / "prices.toml", "USD")
    for tenant, row in ledger.items():
        caller = seen[tenant]
        assert row["requests"] == caller["requests"] > 0, tenant
        if caller["unseen"]:  # a stream cut midway: the gateway charged what it had, the caller saw nothing
            assert tenant == FLEET_TENANT and row["input_tokens"] >= caller["input_tokens"]
            continue
        assert {k: row[k] for k in ("input_tokens", "output_tokens", "cost_micro")} == {
            k: caller[k] for k in ("input_tokens", "output_tokens", "cost_micro")}, tenant
        together = cost_micro(table.price_at(MODEL_OF.get(tenant, MODEL)), row["input_tokens"], row["output_tokens"])
        assert together <= row["cost_micro"] <= together + row["requests"], tenant
    priced = [r for r in usage["rows"] if r["currency"] == "USD"]
    assert all(r["cost"] == f"{r['cost_micro'] / 1e6:.6f}" for r in priced)
    assert sum(r["requests"] for r in usage["rows"]) == demo.summary["requests"]["total"] - 6 - 1  # all but 401/403
    assert "Usage and cost per tenant (from the usage ledger)" in demo.stdout
    assert all(f"│ {tenant}" in demo.stdout for tenant in ledger)


def test_the_printed_usage_command_prints_the_same_table_afterwards(demo):
    usage = demo.summary["usage"]
    assert f"the same table again: {usage['command']}" in demo.stdout
    argv = shlex.split(usage["command"])
    assert argv[1:] == ["usage", "--by", "tenant", "--since", usage["since"], "--ledger",
                        str(demo.state / "ledger.sqlite3")]
    again = subprocess.run([*argv, "--format", "json"], env=demo.env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"by": "tenant", "rows": usage["rows"]}
    shown = subprocess.run(argv, env=demo.env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.splitlines()[0].split()[:3] == ["tenant", "currency", "requests"]


def test_the_trial_tenant_was_refused_at_its_budget_with_insufficient_quota_and_a_reset_time(demo):
    budget, rows = demo.summary["budget"], by_tenant(demo.summary["usage"]["rows"])
    refused = budget["refused"]
    assert (refused["status"], refused["type"], refused["code"]) == (429, "insufficient_quota", "insufficient_quota")
    # the budget is per UTC day: it resets at the midnight after the refusal (the run may have crossed one)
    started = datetime.strptime(demo.summary["usage"]["since"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    midnight = started.replace(hour=0, minute=0, second=0)
    assert refused["reset"] in {(midnight + timedelta(days=d)).strftime("%Y-%m-%dT%H:%M:%SZ") for d in (1, 2)}
    assert 0 < int(refused["retry_after"]) <= 86400
    assert f"budget exceeded for tenant '{TRIAL}'" in refused["message"] and refused["reset"] in refused["message"]

    limit = tenants.load(demo.state / "demo" / "tenants.toml").tenants[TRIAL].budget
    price = prices.load(demo.state / "demo" / "prices.toml", "USD").price_at(MODEL)
    worst = [cost_micro(price, len(p.encode()), TRIAL_MAX_TOKENS) for p in PROMPTS]  # the gateway's reservation
    spent = rows[TRIAL]["cost_micro"]  # the admitted requests' cost, as the ledger has it
    assert budget["admitted"] >= 1 and rows[TRIAL]["requests"] == budget["admitted"] + 1
    assert spent == budget["spent_micro"] and spent <= limit.amount_micro + max(worst)
    assert spent + worst[budget["admitted"] % len(PROMPTS)] > limit.amount_micro  # the refused one did not fit
    assert "insufficient_quota" in demo.stdout and refused["reset"] in demo.stdout
