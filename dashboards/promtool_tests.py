"""``alerts_test.yml``: ``promtool test rules`` cases for the key alerts (firing and quiet)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gpt_observatory.dashboards import metering_rules, rules
from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards.scrape import GATEWAY_JOB, GPU_JOB
from gpt_observatory.telemetry import names

PIPELINE_JOB = "observatory-pipeline"


@dataclass(frozen=True, slots=True)
class Case:
    """Input series (``{series selector: promtool values}``) and, at ``at``, the alerts expected
    to fire with their labels (besides the rule's own)."""

    name: str
    series: dict[str, str]
    alert: str
    at: str
    firing: tuple[dict[str, str], ...] = ()
    interval: str = "1m"


def _sel(series: str, **labels: str) -> str:
    return series + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def cases() -> tuple[Case, ...]:
    http = s.count(names.HTTP_SERVER_REQUEST_DURATION)
    route = {s.JOB: GATEWAY_JOB, s.HTTP_ROUTE: "/v1/chat/completions"}
    gw = {s.JOB: GATEWAY_JOB}
    ttft = names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN
    le_1s = s.le(1.0, names.TTFT_BUCKETS)
    attempts, requests = s.total(names.AUTH_ATTEMPTS), s.total(names.GATEWAY_REQUESTS)
    exported = s.total(names.TELEMETRY_EXPORTED)
    backend = {s.JOB: GATEWAY_JOB, s.TELEMETRY_SIGNAL: "traces", s.TELEMETRY_BACKEND: "otlp"}
    runs = s.total(names.PIPELINE_RUNS)
    flow = {s.JOB: PIPELINE_JOB, s.PIPELINE_FLOW: "pipeline"}
    gpu = {s.JOB: GPU_JOB, s.HW_ID: "GPU-0b1e", s.CLOCK_EVENT_REASON: "hw_thermal_slowdown"}
    promoted = {s.JOB: PIPELINE_JOB, s.MODEL_NAME: "tiny-gpt"}
    decisions = s.total(names.PIPELINE_DECISIONS)
    fail_open = s.total(names.RATE_LIMIT_FAIL_OPEN)
    timed_out = {**gw, s.RATE_LIMIT_FAILURE: "timeout"}
    overflow = s.total(names.TELEMETRY_SERIES_OVERFLOW)
    folded = {**gw, s.TELEMETRY_METRIC: names.GATEWAY_REQUESTS.name}
    throttled = s.total(names.AUTH_THROTTLED)
    registry_errors = s.total(names.MODEL_REGISTRY_ERRORS)
    polled = {**gw, s.MODEL_NAME: "tiny-gpt"}
    dropped = s.total(names.TELEMETRY_DROPPED)
    queue_full = {**backend, names.prometheus_label(names.TELEMETRY_DROP_REASON): "queue_full"}
    by_address = {**gw, s.AUTH_THROTTLE_KEY: "address"}
    return (
        Case("10% of API requests fail: availability budget burns fast", {
            _sel(http, **route, **{s.STATUS_CODE: "200"}): "0+54x120",
            _sel(http, **route, **{s.STATUS_CODE: "500"}): "0+6x120",
        }, "GatewayAvailabilityErrorBudgetBurnFast", "70m", (gw,)),
        Case("no 5xx: availability alerts stay quiet", {
            _sel(http, **route, **{s.STATUS_CODE: "200"}): "0+60x120",
            _sel(http, **route, **{s.STATUS_CODE: "401"}): "0+60x120",
        }, "GatewayAvailabilityErrorBudgetBurnFast", "70m"),
        Case("10% of streams cut after their 200 went out: availability budget burns fast", {
            _sel(http, **route, **{s.STATUS_CODE: "200"}): "0+54x120",
            _sel(http, **route, **{s.STATUS_CODE: "200", s.ERROR_TYPE: "stream_truncated"}): "0+6x120",
        }, "GatewayAvailabilityErrorBudgetBurnFast", "70m", (gw,)),
        Case("80% of first tokens slower than 1 s: TTFT budget burns fast", {
            _sel(s.bucket(ttft), **gw, **{s.LE: le_1s}): "0+20x120",
            _sel(s.count(ttft), **gw): "0+100x120",
        }, "TtftErrorBudgetBurnFast", "70m", (gw,)),
        Case("repeated thermal slowdown pages", {
            _sel(s.gauge(names.GPU_CLOCK_EVENT), **gpu): "1x20",
        }, "GpuThermalThrottling", "10m", (gpu,)),
        Case("two-thirds of credentials refused", {
            _sel(attempts, **gw, **{s.AUTH_METHOD: "api_key", s.AUTH_OUTCOME: "ok"}): "0+30x30",
            _sel(attempts, **gw, **{s.AUTH_METHOD: "api_key", s.AUTH_OUTCOME: "unknown_key"}): "0+60x30",
        }, "AuthFailureSpike", "15m", (gw,)),
        Case("half of a tenant's requests answered 429", {
            _sel(requests, **gw, **{s.TENANT: "acme", s.STATUS_CODE: "200"}): "0+30x30",
            _sel(requests, **gw, **{s.TENANT: "acme", s.STATUS_CODE: "429"}): "0+30x30",
            _sel(requests, **gw, **{s.TENANT: "globex", s.STATUS_CODE: "200"}): "0+30x30",
        }, "RateLimitSpike", "20m", ({**gw, s.TENANT: "acme"},)),
        Case("Redis timed out: requests admitted unchecked", {
            _sel(fail_open, **timed_out): "0+3x10",
        }, "RateLimitFailOpen", "5m", (timed_out,)),
        # A counter's series appears at its first add, already above 0: increase() alone never sees it.
        Case("Redis's first timeout (the counter appears at 1)", {
            _sel(fail_open, **timed_out): "_x3 1x10",
        }, "RateLimitFailOpen", "5m", (timed_out,)),
        Case("no fail-open in the last 5 minutes: quiet", {
            _sel(fail_open, **timed_out): "0+3x5 15x10",
        }, "RateLimitFailOpen", "15m"),
        Case("2 throttled authentications a second for 5 minutes", {
            _sel(throttled, **by_address): "0+120x20",
        }, "AuthThrottling", "15m", (by_address,)),
        Case("a few throttled authentications do not alert", {
            _sel(throttled, **by_address): "0+30x20",
        }, "AuthThrottling", "15m"),
        Case("per-tenant requests folded into the overflow series", {
            _sel(overflow, **folded): "0+40x10",
        }, "TelemetrySeriesOverflow", "5m", (folded,)),
        Case("the first request folded into the overflow series (the counter appears at 1)", {
            _sel(overflow, **folded): "_x3 1x10",
        }, "TelemetrySeriesOverflow", "5m", (folded,)),
        Case("no request folded in the last 5 minutes: quiet", {
            _sel(overflow, **folded): "_x3 1x15",
        }, "TelemetrySeriesOverflow", "15m"),
        # Polled every 10 s, scraped every 15 s: the first scrape after the outage began sees a few errors.
        # Held 10 minutes from the first scrape (increase() alone sees them a minute later).
        Case("the registry unreachable from the first failed polls (the counter appears at 4, 6 more a minute)", {
            _sel(registry_errors, **polled): "_x2 4+6x20",
        }, "ModelRegistryUnreachable", "12m", (polled,)),
        Case("a registry that failed a few polls and came back is no alert", {
            _sel(registry_errors, **polled): "_x2 4x20",
        }, "ModelRegistryUnreachable", "12m"),
        Case("spans dropped for 10 minutes from the first drops (the counter appears at 512)", {
            _sel(dropped, **queue_full): "_x3 512+512x20",
        }, "TelemetryDropping", "13m", (backend,)),
        Case("one burst of drops is no alert", {
            _sel(dropped, **queue_full): "_x3 512x20",
        }, "TelemetryDropping", "13m"),
        Case("9% of spans fail to export", {
            _sel(exported, **backend, **{s.TELEMETRY_OUTCOME: "success"}): "0+100x30",
            _sel(exported, **backend, **{s.TELEMETRY_OUTCOME: "failure"}): "0+10x30",
        }, "TelemetryExportFailing", "25m", (backend,)),
        Case("the last pushed pipeline run failed", {
            _sel(runs, **flow, **{s.PIPELINE_OUTCOME: "failed"}): "1x10",
        }, "PipelineRunFailed", "5m", (flow,)),
        Case("a completed pipeline run does not alert", {
            _sel(runs, **flow, **{s.PIPELINE_OUTCOME: "completed"}): "1x10",
        }, "PipelineRunFailed", "5m"),
        # Promotion times before the test clock's start (0) keep the evaluation short.
        Case(f"last promotion {rules.NO_PROMOTION_DAYS + 1} days ago", {
            _sel(s.gauge(names.PIPELINE_LAST_PROMOTION), **promoted): f"{-(rules.NO_PROMOTION_DAYS + 1) * 86400}x180",
        }, "NoSuccessfulPromotion", "2h", (promoted,)),
        Case(f"last promotion {rules.NO_PROMOTION_DAYS - 1} days ago", {
            _sel(s.gauge(names.PIPELINE_LAST_PROMOTION), **promoted): f"{-(rules.NO_PROMOTION_DAYS - 1) * 86400}x180",
        }, "NoSuccessfulPromotion", "2h"),
        Case("the canary guard rolled the champion back", {
            _sel(decisions, **promoted, **{s.PIPELINE_DECISION: "promoted"}): "1x10",
            _sel(decisions, **promoted, **{s.PIPELINE_DECISION: "rolled_back"}): "1x10",
        }, "ModelRolledBack", "5m", (promoted,)),
        Case("a promotion alone does not alert as a rollback", {
            _sel(decisions, **promoted, **{s.PIPELINE_DECISION: "promoted"}): "1x10",
        }, "ModelRolledBack", "5m"),
        *_fleet_cases(),
        *_budget_cases(),
        *_ledger_cases(),
    )


def _fleet_cases() -> tuple[Case, ...]:
    """Replica pools: a replica's state series (one per state, 1 for the current one), attempts per
    replica and outcome, retries and refusals per pool."""
    pool = {s.JOB: GATEWAY_JOB, s.POOL: "llama-70b"}
    state, attempts = s.gauge(names.FLEET_REPLICA_STATE), s.total(names.FLEET_REPLICA_REQUESTS)
    retries, refused = s.total(names.FLEET_RETRIES), s.total(names.FLEET_UNAVAILABLE)

    def replicas(*states: str, values: dict[str, str] | None = None) -> dict[str, str]:
        """One replica per entry of ``states`` (its state throughout, unless ``values`` gives its healthy series)."""
        out = {}
        for i, current in enumerate(states):
            for st in names.FLEET_STATES:
                out[_sel(state, **pool, **{s.REPLICA: f"r{i}", s.FLEET_STATE: st})] = "1x20" if st == current else "0x20"
        for key, series in (values or {}).items():
            out[key] = series
        return out

    def attempt(replica: str, outcome: str) -> str:
        return _sel(attempts, **pool, **{s.REPLICA: replica, s.FLEET_OUTCOME: outcome})

    r1 = {**pool, s.REPLICA: "r1"}
    r1_ejected = _sel(state, **r1, **{s.FLEET_STATE: "ejected"})
    r1_healthy = _sel(state, **r1, **{s.FLEET_STATE: "healthy"})
    retried = _sel(retries, **pool, **{s.FLEET_OUTCOME: "connect_error"})
    return (
        Case("a replica ejected now", replicas("healthy", "ejected"), "ReplicaEjected", "2m", (r1,)),
        Case("an ejection over 3 minutes ago still alerts: a flapping replica is one alert",
             replicas("healthy", "healthy", values={r1_ejected: "1 1 0x20", r1_healthy: "0 0 1x20"}),
             "ReplicaEjected", "5m", (r1,)),
        Case("an ejection over 5 minutes ago does not alert",
             replicas("healthy", "healthy", values={r1_ejected: "1 1 0x20", r1_healthy: "0 0 1x20"}),
             "ReplicaEjected", "8m"),
        Case("an ejection between two scrapes (its counter went up) alerts", {
            **replicas("healthy", "unhealthy"),
            _sel(s.total(names.FLEET_REPLICA_EJECTIONS), **r1, **{s.FLEET_OUTCOME: "connect_error"}): "1 1 2x10",
        }, "ReplicaEjected", "3m", (r1,)),
        Case("a replica's first ejection between two scrapes (the counter appears at 1)", {
            **replicas("healthy", "unhealthy"),
            _sel(s.total(names.FLEET_REPLICA_EJECTIONS), **r1, **{s.FLEET_OUTCOME: "connect_error"}): "_x3 1x10",
        }, "ReplicaEjected", "5m", (r1,)),
        Case("a pool of healthy replicas has none ejected", replicas("healthy", "healthy"), "ReplicaEjected", "10m"),
        Case("one of three replicas left for 5 minutes", replicas("healthy", "ejected", "unhealthy"),
             "PoolBelowHealthy", "10m", (pool,)),
        Case("three of four replicas healthy are enough", replicas("healthy", "healthy", "healthy", "ejected"),
             "PoolBelowHealthy", "10m"),
        Case("a one-replica pool with its replica in is not short", replicas("healthy"), "PoolBelowHealthy", "10m"),
        Case("three of eight replicas healthy: under half the pool", replicas(*["healthy"] * 3, *["unhealthy"] * 5),
             "PoolBelowHealthy", "10m", (pool,)),
        Case("every replica out", replicas("ejected", "unhealthy"), "PoolUnavailable", "5m", (pool,)),
        Case("5% of a pool's requests refused while its gauge showed a replica in", {
            **replicas("healthy", "ejected"),
            attempt("r0", "ok"): "0+60x20",
            _sel(refused, **pool): "0+3x20",
        }, "PoolUnavailable", "10m", (pool,)),
        Case("no request refused and a replica in: the pool is available", {
            **replicas("healthy", "ejected"),
            attempt("r0", "ok"): "0+60x20",
        }, "PoolUnavailable", "10m"),
        Case("20% of first attempts retried", {
            attempt("r0", "ok"): "0+60x30",
            attempt("r1", "connect_error"): "0+12x30",
            retried: "0+12x30",
        }, "RetryRatioHigh", "25m", (pool,)),
        Case("5% of first attempts retried is no alert, though 30 retries a minute", {
            attempt("r0", "ok"): "0+600x30",
            attempt("r1", "connect_error"): "0+30x30",
            retried: "0+30x30",
        }, "RetryRatioHigh", "25m"),
        Case("a quiet pool's one retry a minute is no alert, whatever its ratio", {
            attempt("r0", "ok"): "0+2x30",
            attempt("r1", "connect_error"): "0+1x30",
            retried: "0+1x30",
        }, "RetryRatioHigh", "25m"),
    )


def _budget_cases() -> tuple[Case, ...]:
    """Tenant budgets: spend and limit per tenant as two gateway processes report them, budget refusals,
    and budget store failures."""
    acme = {s.JOB: GATEWAY_JOB, s.TENANT: "acme"}
    spent, limit = s.gauge(names.BUDGET_SPENT), s.gauge(names.BUDGET_LIMIT)
    refused = _sel(s.total(names.GATEWAY_REJECTIONS), **acme, **{s.REJECTION_REASON: names.REJECTION_BUDGET})
    failure = {s.JOB: GATEWAY_JOB, names.prometheus_label(names.BUDGET_FAILURE): "timeout",
               names.prometheus_label(names.BUDGET_FAIL_MODE): "open"}

    def spend(*values: str) -> dict[str, str]:
        """acme's spend as each gateway process (instance) last read it, against a budget of 1,000,000."""
        out = {}
        for i, series in enumerate(values):
            out[_sel(spent, **acme, instance=f"gw{i}")] = series
            out[_sel(limit, **acme, instance=f"gw{i}")] = "1000000x20"
        return out

    return (
        Case("a tenant at 85 % of its budget (the latest of two processes' reads)", spend("850000x20", "700000x20"),
             "BudgetNearlySpent", "5m", (acme,)),
        Case("a tenant at 60 % is no alert", spend("600000x20", "500000x20"), "BudgetNearlySpent", "5m"),
        Case("a spent budget is no longer 'nearly' spent", spend("1000000x20"), "BudgetNearlySpent", "5m"),
        Case("a tenant at 100 % of its budget", spend("1000000x20"), "BudgetExhausted", "5m", (acme,)),
        Case("a tenant refused for its budget below 100 % (its next worst case did not fit)", {
            **spend("950000x20"), refused: "0 0 0 1 2x16",
        }, "BudgetExhausted", "5m", (acme,)),
        Case("a tenant's first refusals for its budget (the counter appears at 2)", {
            **spend("950000x20"), refused: "_x3 2x16",
        }, "BudgetExhausted", "5m", (acme,)),
        Case("a tenant at 90 % and never refused has not exhausted its budget", {
            **spend("900000x20"), refused: "0x20",
        }, "BudgetExhausted", "5m"),
        Case("the budget store timed out: requests admitted without a budget check", {
            _sel(s.total(names.BUDGET_STORE_FAILURES), **failure): "0+2x10",
        }, "BudgetStoreFailing", "5m", (failure,)),
        Case("the budget store's first failure (the counter appears at 1)", {
            _sel(s.total(names.BUDGET_STORE_FAILURES), **failure): "_x3 1x10",
        }, "BudgetStoreFailing", "5m", (failure,)),
        Case("no budget store failure in the last 5 minutes: quiet", {
            _sel(s.total(names.BUDGET_STORE_FAILURES), **failure): "0+2x3 6x20",
        }, "BudgetStoreFailing", "15m"),
    )


def _ledger_cases() -> tuple[Case, ...]:
    """The usage ledger of one gateway process: rows dropped by reason, ship failures, spool backlog and lag."""
    gw0 = {s.JOB: GATEWAY_JOB, s.INSTANCE: "gw0"}
    full = {**gw0, s.LEDGER_REASON: "spool_error"}
    dropped = _sel(s.total(names.LEDGER_ROWS_DROPPED), **full)
    failures = _sel(s.total(names.LEDGER_SHIP_FAILURES), **gw0)
    lag, spool = _sel(s.gauge(names.LEDGER_LAG), **gw0), _sel(s.gauge(names.LEDGER_SPOOL_ROWS), **gw0)
    high = metering_rules.LEDGER_LAG_HIGH_S
    return (
        Case("one row dropped on a full spool", {dropped: "0 0 1x10"}, "LedgerRowsDropped", "4m", (full,)),
        Case("the first rows dropped (the counter appears at 3)", {dropped: "_x3 3x10"}, "LedgerRowsDropped", "5m",
             (full,)),
        Case("no row dropped in the last 5 minutes: quiet", {dropped: "0 1x20"}, "LedgerRowsDropped", "10m"),
        Case("a counter that appeared over 5 minutes ago and stays: quiet", {dropped: "_x3 3x20"},
             "LedgerRowsDropped", "15m"),
        Case("the store refuses every batch (12 a minute, backing off 5 s)", {failures: "0+12x20"},
             "LedgerShipFailing", "10m", (gw0,)),
        Case("a store that failed for a minute and came back is no alert", {failures: "0 6 12x20"},
             "LedgerShipFailing", "10m"),
        Case(f"the oldest unshipped row ages past {high} s and stays there", {lag: "0+30x20"}, "LedgerLagHigh",
             "10m", (gw0,)),
        Case(f"a lag under {high} s is no alert", {lag: f"{high - 20}x20"}, "LedgerLagHigh", "10m"),
        Case("a spool growing 100 rows a minute for 20 minutes", {spool: "0+100x30"}, "LedgerSpoolGrowing", "20m",
             (gw0,)),
        Case("a spool emptied by each shipping pass is no alert", {spool: " ".join(["0", "500"] * 15)},
             "LedgerSpoolGrowing", "20m"),
        Case("a large backlog that does not grow is no alert", {spool: "5000x30"}, "LedgerSpoolGrowing", "20m"),
        Case("a gateway started on a full spool that drains is no alert", {spool: "3000 2000 1000 0x30"},
             "LedgerSpoolGrowing", "10m"),
    )


def _expand(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), template)


def tests_document(rule_file: str = "alerts.yml") -> dict[str, Any]:
    """``alerts_test.yml`` as data; expected annotations are the rule's, expanded."""
    by_name = {a.alert: a for a in rules.alerts()}
    tests = []
    for case in cases():
        rule = by_name[case.alert]

        def expected(firing: tuple[dict[str, str], ...], rule: rules.Alert = rule) -> list[dict[str, Any]]:
            out = []
            for labels in firing:
                full = {**labels, "severity": rule.severity, **dict(rule.labels)}
                annotations = {"summary": _expand(rule.summary, full), "description": _expand(rule.description, full)}
                out.append({"exp_labels": full, "exp_annotations": annotations})
            return out

        tests.append({
            "name": case.name,
            "interval": case.interval,
            "input_series": [{"series": k, "values": v} for k, v in case.series.items()],
            "alert_rule_test": [{"eval_time": case.at, "alertname": case.alert, "exp_alerts": expected(case.firing)}],
        })
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": tests}
