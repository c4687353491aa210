"""Prometheus recording and alert rules (``alerts.yml``).

SLOs use the multi-window, multi-burn-rate alerts of the Google SRE workbook: page when the
error budget burns 14.4x (1 h and 5 min windows) or 6x (6 h and 30 min); open a ticket at 3x
(1 d and 2 h) or 1x (3 d and 6 h). Each SLI is recorded per window as a ratio of bad events that
is 0, not empty, while nothing is bad.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from gpt_observatory.dashboards import events, metering_rules
from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards._rulespec import Alert, Group, Recording
from gpt_observatory.dashboards.boards import fleet
from gpt_observatory.dashboards.boards.gpu import THERMAL_REASONS
from gpt_observatory.dashboards.metering_rules import BUDGET_USED, BUDGETS_GROUP, LEDGER_GROUP, rose
from gpt_observatory.dashboards.query import agg, below, failed_ratio, rate, ratio, sel
from gpt_observatory.dashboards.scrape import GATEWAY_JOB
from gpt_observatory.telemetry import names

WINDOWS: Final = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
# (severity, for, ((long window, short window, burn-rate factor), ...))
BURN_ALERTS: Final = (
    ("page", "2m", (("1h", "5m", 14.4), ("6h", "30m", 6.0))),
    ("ticket", "15m", (("1d", "2h", 3.0), ("3d", "6h", 1.0))),
)
NO_PROMOTION_DAYS: Final = 7
AUTH_THROTTLED_PER_S: Final = 1.0  # refusals by failed-auth throttling, sustained over 5 minutes
# Fleet: a pool is short of replicas below max(POOL_MIN_HEALTHY, POOL_MIN_HEALTHY_SHARE of its size), capped
# at its size (a one-replica pool alerts when that one is out).
# Registry polls that failed in 10 minutes (held 10 minutes) before ModelRegistryUnreachable fires.
REGISTRY_ERRORS_MAX: Final = 3
POOL_MIN_HEALTHY: Final = 2
POOL_MIN_HEALTHY_SHARE: Final = 0.5
RETRY_RATIO_HIGH: Final = 0.1  # retries over first attempts over 5 minutes (half the pool's default budget)
RETRIES_MIN_PER_S: Final = 0.05  # ... and at least 3 retries a minute (a quiet pool's one retry is no trend)
POOL_REFUSED_RATIO: Final = 0.01  # share of a pool's requests refused with no replica
FLEET_GROUP: Final = "observatory-fleet"
FLEET_HEALTHY: Final = "observatory:fleet_healthy_replicas"  # per job and pool, healthy in every process's view
FLEET_REPLICAS: Final = "observatory:fleet_replicas"
FLEET_FIRST_ATTEMPTS: Final = "observatory:fleet_first_attempts:rate5m"
__all__ = ["BUDGETS_GROUP", "BUDGET_USED", "FLEET_GROUP", "LEDGER_GROUP", "SLOS", "Alert", "Group", "Recording",
           "alerts", "groups", "recorded", "rules_document"]


@dataclass(frozen=True, slots=True)
class Slo:
    """``objective`` of events are good; ``bad_ratio(window)`` is the PromQL share of bad ones."""

    name: str
    title: str
    objective: float
    description: str
    bad_ratio: Callable[[str], str]

    def record(self, window: str) -> str:
        return f"observatory:slo_{self.name}:bad_ratio_rate{window}"


def _server_errors(window: str) -> str:
    # A 5xx, or a failure after the status went out (a cut stream keeps its 200 and has error.type).
    return failed_ratio(s.count(names.HTTP_SERVER_REQUEST_DURATION), s.API_ROUTES, by=(s.JOB,), window=window)


def _slow_requests(window: str) -> str:
    le = s.le(2.5, names.HTTP_DURATION_BUCKETS)
    return below(names.HTTP_SERVER_REQUEST_DURATION, le, s.API_ROUTES, by=(s.JOB,), window=window)


def _slow_first_tokens(window: str) -> str:
    # Served in process (server) or proxying an upstream (client): whichever the job emits.
    le = s.le(1.0, names.TTFT_BUCKETS)
    server = below(names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, le, by=(s.JOB,), window=window)
    client = below(names.GEN_AI_CLIENT_TIME_TO_FIRST_CHUNK, le, by=(s.JOB,), window=window)
    return f"({server}) or ({client})"


SLOS: Final = (
    Slo("gateway_availability", "Gateway availability", 0.995, "API requests answered without a 5xx or a failure mid-response",
        _server_errors),
    Slo("gateway_latency", "Gateway latency", 0.99, "API requests answered within 2.5 s", _slow_requests),
    Slo("ttft", "Time to first token", 0.95, "generations whose first token came within 1 s", _slow_first_tokens),
)


def _burn_alerts(slo: Slo) -> Iterator[Alert]:
    budget = 1 - slo.objective
    for severity, for_, pairs in BURN_ALERTS:
        conditions = [
            f"({slo.record(long)} > {round(factor * budget, 6)} and {slo.record(short)} > {round(factor * budget, 6)})"
            for long, short, factor in pairs
        ]
        speed = "fast" if severity == "page" else "slow"
        rates = " or ".join(f"{factor:g}x over {long}" for long, _, factor in pairs)
        yield Alert(
            alert=f"{''.join(w.title() for w in slo.name.split('_'))}ErrorBudgetBurn{speed.title()}",
            expr=" or ".join(conditions),
            for_=for_,
            severity=severity,
            summary=f"{slo.title} SLO: error budget burning {speed} on {{{{ $labels.job }}}}",
            description=f"SLO {slo.objective:.1%} of {slo.description}; the budget burns at {rates}.",
            labels=(("slo", slo.name),),
        )


def groups() -> tuple[Group, ...]:
    """Every rule group of ``alerts.yml``."""
    attempts, requests = s.total(names.AUTH_ATTEMPTS), s.total(names.GATEWAY_REQUESTS)
    exported, runs = s.total(names.TELEMETRY_EXPORTED), s.total(names.PIPELINE_RUNS)
    per_backend = (s.JOB, s.TELEMETRY_SIGNAL, s.TELEMETRY_BACKEND)
    per_gpu = (s.JOB, s.HW_ID)
    refused = f'{s.AUTH_OUTCOME}!="ok"'
    failed_export = f'{s.TELEMETRY_OUTCOME}="failure"'
    failed_run = f'{s.PIPELINE_OUTCOME}="failed"'
    limited = f'{s.STATUS_CODE}="429"'
    ecc_uncorrected = f'{s.ERROR_TYPE}="ecc_uncorrected"'
    gateway_up = sel(s.UP, f'{s.JOB}="{GATEWAY_JOB}"')
    general = sel(s.gauge(names.HW_GPU_UTILIZATION), f'{s.GPU_TASK}="general"')
    thermal = sel(s.gauge(names.GPU_CLOCK_EVENT), f'{s.CLOCK_EVENT_REASON}=~"{"|".join(THERMAL_REASONS)}"')
    last_promotion = f"max_over_time({s.gauge(names.PIPELINE_LAST_PROMOTION)}[30d])"
    decisions = s.total(names.PIPELINE_DECISIONS)
    rolled_back = f'{s.PIPELINE_DECISION}="rolled_back"'
    slis = Group("observatory-slis", tuple(
        Recording(slo.record(w), slo.bad_ratio(w)) for slo in SLOS for w in WINDOWS
    ))
    slo_alerts = Group("observatory-slo-alerts", tuple(a for slo in SLOS for a in _burn_alerts(slo)))
    gateway = Group("observatory-gateway", (
        Alert("GatewayDown", f"{gateway_up} == 0", "2m", "page",
              "Gateway {{ $labels.instance }} is not being scraped",
              "Prometheus cannot scrape the gateway's /metrics: the process is down or unreachable."),
        Alert("AuthFailureSpike",
              f"{ratio(attempts, refused, by=(s.JOB,), window='5m')} > 0.25 "
              f"and {rate(attempts, refused, by=(s.JOB,), window='5m')} > 0.5",
              "5m", "ticket", "Many refused credentials on {{ $labels.job }}",
              "Over a quarter of authentication attempts (and more than 30 a minute) are refused: "
              "a misconfigured client, an expired key or credential stuffing. See the gateway dashboard."),
        Alert("RateLimitSpike",
              f"{ratio(requests, limited, by=(s.JOB, s.TENANT), window='5m')} > 0.1",
              "10m", "ticket", "Tenant {{ $labels.observatory_tenant }} is being rate limited",
              "More than 10% of the tenant's requests are answered 429: raise its limit or find the runaway client."),
        Alert("RateLimitFailOpen",
              rose(s.total(names.RATE_LIMIT_FAIL_OPEN), by=(s.JOB, s.RATE_LIMIT_FAILURE)),
              "0m", "ticket", "{{ $labels.job }} admits requests without checking rate limits "
              "({{ $labels.observatory_rate_limit_failure }})",
              "The rate-limit store (Redis) failed or timed out, so requests were let through unchecked: limits and "
              "budgets are not enforced while it lasts. Check Redis (up, reachable, not frozen or swapping) and the "
              "gateway's redis_timeout_s.",
              needs=events.FAIL_OPEN),
        Alert("AuthThrottling",
              f"{rate(s.total(names.AUTH_THROTTLED), by=(s.JOB, s.AUTH_THROTTLE_KEY), window='5m')} "
              f"> {AUTH_THROTTLED_PER_S:g}",
              "5m", "ticket", "{{ $labels.job }} throttles failed authentications "
              "(by {{ $labels.observatory_auth_throttle_key }})",
              f"More than {AUTH_THROTTLED_PER_S:g} attempt a second refused for 5 minutes because the same client "
              "address or key id kept failing: credential stuffing, or a client retrying with a revoked key. "
              "Find the source on the gateway dashboard's auth panels; block it upstream if it is hostile.",
              needs=events.AUTH_THROTTLED),
        Alert("ModelRegistryUnreachable",
              rose(s.total(names.MODEL_REGISTRY_ERRORS), by=(s.JOB, s.MODEL_NAME), window="10m",
                   above=REGISTRY_ERRORS_MAX),
              "10m", "ticket", "The gateway cannot poll the model registry for {{ $labels.observatory_model_name }}",
              "The gateway keeps serving the loaded version but will not pick up a promotion or rollback.",
              needs=events.REGISTRY_ERROR),
    ))
    gpu = Group("observatory-gpu", (
        Alert("GpuSaturated", f"{agg('avg', f'avg_over_time({general}[15m])', per_gpu)} > 0.95",
              "15m", "ticket", "GPU {{ $labels.hw_id }} is saturated",
              "Utilisation above 95% for 15 minutes: requests queue; add capacity or shed load."),
        Alert("GpuMemoryNearlyFull", f"{agg('max', s.gauge(names.HW_GPU_MEMORY_UTILIZATION), per_gpu)} > 0.95",
              "10m", "ticket", "GPU {{ $labels.hw_id }} memory is over 95% used",
              "Close to out-of-memory: check per-process memory on the GPU dashboard."),
        Alert("GpuThermalThrottling",
              f"{agg('max', f'max_over_time({thermal}[5m])', (*per_gpu, s.CLOCK_EVENT_REASON))} > 0",
              "5m", "page",
              "GPU {{ $labels.hw_id }} is thermally throttled ({{ $labels.observatory_gpu_clock_event_reason }})",
              "NVML reports a thermal slowdown: clocks are reduced; check cooling and temperature."),
        Alert("GpuTemperatureHigh", f"{agg('max', s.gauge(names.HW_TEMPERATURE), per_gpu)} > 85", "5m", "ticket",
              "GPU {{ $labels.hw_id }} is above 85 °C", "Throttling follows soon at this temperature."),
        Alert("GpuUncorrectableErrors",
              f"{rate(s.total(names.HW_ERRORS), ecc_uncorrected, by=per_gpu, window='15m', fn='increase')} > 0",
              "0m", "page", "GPU {{ $labels.hw_id }} reported uncorrectable ECC errors",
              "Drain the GPU: results computed on it may be wrong."),
    ))
    health = Group("observatory-telemetry", (
        Alert("TelemetryExportFailing", f"{ratio(exported, failed_export, by=per_backend, window='10m')} > 0.01",
              "10m", "ticket", "{{ $labels.job }} fails to export {{ $labels.observatory_telemetry_signal }} "
              "to {{ $labels.observatory_telemetry_backend }}",
              "More than 1% of items fail to export: the backend (collector, MLflow, Pushgateway) is down or refusing."),
        Alert("TelemetrySeriesOverflow",
              rose(s.total(names.TELEMETRY_SERIES_OVERFLOW), by=(s.JOB, s.TELEMETRY_METRIC)),
              "0m", "ticket", "{{ $labels.job }} folds {{ $labels.observatory_telemetry_metric }} into its overflow series",
              "The metric reached its series limit (e.g. more tenants than the per-tenant limit): new label values are "
              "counted in one overflow series, not per value. Raise metric_series_limit (OBSERVATORY_METRIC_SERIES_LIMIT) or find what "
              "grows the label set.",
              needs=events.SERIES_OVERFLOW),
        Alert("TelemetryDropping", rose(s.total(names.TELEMETRY_DROPPED), by=per_backend, window="10m"),
              "10m", "ticket", "{{ $labels.job }} drops {{ $labels.observatory_telemetry_signal }} before export",
              "A bounded export queue is full: the backend is too slow or the batch settings too small."),
    ))
    pipeline = Group("observatory-pipeline", (
        # Batch runs push to the Pushgateway: the counter holds the last run's counts per job.
        Alert("PipelineRunFailed",
              f"({agg('sum', sel(runs, failed_run), (s.JOB, s.PIPELINE_FLOW))} "
              f"or {agg('sum', runs, (s.JOB, s.PIPELINE_FLOW))} * 0) > 0",
              "0m", "ticket", "Pipeline flow {{ $labels.observatory_pipeline_flow }} failed",
              "The last pushed run of the flow failed; see its Prefect flow run and `observatory pipeline history`."),
        # max_over_time keeps the last promotion time visible after a later push replaced the group.
        Alert("NoSuccessfulPromotion",
              f"time() - {agg('max', last_promotion, (s.JOB, s.MODEL_NAME))} > {NO_PROMOTION_DAYS * 86400}",
              "1h", "ticket", f"No promotion of {{{{ $labels.observatory_model_name }}}} in {NO_PROMOTION_DAYS} days",
              f"The champion has not changed for {NO_PROMOTION_DAYS} days: the pipeline is not running or every "
              "challenger is rejected (see the pipeline dashboard)."),
        # The canary guard rolls back on a live SLO breach (flows/canary.py); so may an operator.
        Alert("ModelRolledBack",
              f"({agg('sum', sel(decisions, rolled_back), (s.JOB, s.MODEL_NAME))} "
              f"or {agg('sum', decisions, (s.JOB, s.MODEL_NAME))} * 0) > 0",
              "0m", "ticket", "The champion of {{ $labels.observatory_model_name }} was rolled back",
              "A promoted version breached its SLO on live traffic and the previous champion serves again: see "
              "`observatory pipeline history` for the figures and the Inference dashboard's canary row."),
    ))
    return (slis, slo_alerts, gateway, gpu, health, pipeline, _fleet(), metering_rules.budgets(),
            metering_rules.ledger())


def _fleet() -> Group:
    """Replica pools (``serving_hooks/backends/pool.py``): health per pool and replica, retries, refusals."""
    per_pool, per_replica = fleet.PER_POOL, (*fleet.PER_POOL, s.REPLICA)
    ejected = sel(fleet.STATE, f'{s.FLEET_STATE}="ejected"')
    ejections = s.total(names.FLEET_REPLICA_EJECTIONS)
    healthy, size, first = FLEET_HEALTHY, FLEET_REPLICAS, FLEET_FIRST_ATTEMPTS
    retry_ratio = fleet.retry_ratio(by=per_pool, window="5m", first=first)
    pool, replica = f"{{{{ $labels.{s.POOL} }}}}", f"{{{{ $labels.{s.REPLICA} }}}}"
    return Group(FLEET_GROUP, (
        Recording(healthy, fleet.healthy_replicas(by=per_pool)),
        Recording(size, fleet.pool_size(by=per_pool)),
        Recording(first, fleet.first_attempts(by=per_pool, window="5m")),
        # max_over_time and the counter: an ejection shorter than a scrape, or hidden by failing probes
        # (state unhealthy wins), still alerts; the window keeps a flapping replica one alert.
        Alert("ReplicaEjected",
              f"{agg('max', f'max_over_time({ejected}[5m])', per_replica)} == 1 "
              f"or {rose(ejections, by=per_replica)}",
              "0m", "ticket", f"Replica {replica} of pool {pool} was ejected",
              "The replica failed its pool's consecutive_errors attempts in a row (connect errors, resets, timeouts, "
              "5xx) and takes no requests for a backoff that grows with each ejection; the pool serves on the other "
              "replicas and retried what had not started, so callers did not see it. A ticket, not a page: look at "
              "the replica (its logs, its GPU, its engine) before it is readmitted and fails again. It stays firing "
              "5 minutes after the last ejection, so a flapping replica is one alert. PoolBelowHealthy and "
              "PoolUnavailable say when the pool itself is short.",
              needs=events.FLEET),
        Alert("PoolBelowHealthy",
              f"{healthy} < clamp_min({size} * {POOL_MIN_HEALTHY_SHARE:g}, {POOL_MIN_HEALTHY}) and {healthy} < {size}",
              "5m", "ticket", f"Pool {pool} is short of healthy replicas",
              f"Fewer than {POOL_MIN_HEALTHY} replicas, or {POOL_MIN_HEALTHY_SHARE:.0%} of the pool if that is more "
              "(all of a smaller pool), have taken requests for 5 minutes, counting a replica healthy only where "
              "every gateway process sees it so: the rest carry the load with no redundancy left. A first ejection "
              "lasts 30 s and a restarted replica's probes readmit it within seconds, so 5 minutes means replicas "
              "that stay out: see the Fleet dashboard's states and the replicas themselves. Thresholds: "
              "POOL_MIN_HEALTHY and POOL_MIN_HEALTHY_SHARE in dashboards/rules.py.",
              needs=events.FLEET),
        Alert("PoolUnavailable",
              f"{healthy} == 0 or {fleet.refused_ratio(by=per_pool, window='5m', first=first)} > {POOL_REFUSED_RATIO:g}",
              "1m", "page", f"Pool {pool} has no replica able to take requests",
              f"Every replica is ejected or failing its probes, or more than {POOL_REFUSED_RATIO:.0%} of the pool's "
              "requests were refused for want of one: callers get 503, or the model's catalog fallbacks if it has "
              "any (Requests served by a fallback, on the Fleet dashboard). A page: the model is down or served by "
              "another. Check the replicas and the network between the gateway and them.",
              needs=events.FLEET),
        Alert("RetryRatioHigh",
              f"{retry_ratio} > {RETRY_RATIO_HIGH:g} "
              f"and {rate(fleet.RETRIES, by=per_pool, window='5m')} > {RETRIES_MIN_PER_S:g}",
              "10m", "ticket", f"Pool {pool} retries over {RETRY_RATIO_HIGH:.0%} of its requests",
              f"More than {RETRY_RATIO_HIGH:.0%} of first attempts retried (and over {RETRIES_MIN_PER_S * 60:g} "
              "retries a minute) for 10 minutes. A healthy pool retries almost never (only connect errors, resets "
              "before the headers and 502/503/504 are retried), so replicas keep failing without being ejected: "
              "failures spread over several replicas, or the ejected share is at max_ejected_share. Each retry adds "
              "a failed attempt's latency, and past the pool's budget (retry_ratio, 20% by default) failures reach "
              "callers (Retries denied, on the Fleet dashboard).",
              needs=events.FLEET_RETRY),
    ))


def recorded() -> frozenset[str]:
    """Series names the recording rules define."""
    return frozenset(r.record for g in groups() for r in g.rules if isinstance(r, Recording))


def alerts() -> Iterator[Alert]:
    for g in groups():
        yield from (r for r in g.rules if isinstance(r, Alert))


def rules_document() -> dict[str, Any]:
    """``alerts.yml`` as data."""
    def rule(r: Recording | Alert) -> dict[str, Any]:
        if isinstance(r, Recording):
            return {"record": r.record, "expr": r.expr}
        return {
            "alert": r.alert,
            "expr": r.expr,
            "for": r.for_,
            "labels": {"severity": r.severity, **dict(r.labels)},
            "annotations": {"summary": r.summary, "description": r.description},
        }

    return {"groups": [{"name": g.name, "rules": [rule(r) for r in g.rules]} for g in groups()]}
