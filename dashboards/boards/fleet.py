"""Fleet: replica pools (``serving_hooks/backends/pool.py``) and the catalog's fallbacks.

Health per pool and replica, attempts and their outcomes, outstanding requests (what the
least-outstanding balancer compares), ejections, retries and the retry budget, refusals and
fallbacks. Descriptions name the Envoy cluster statistic each panel corresponds to, for operators
who know those.

Each gateway process (and each ``serve --workers`` worker) keeps its own view of a pool: it ejects
a replica on its own traffic. A replica counts as healthy in a pool when every process sees it
healthy (``min`` over instances and workers); counters are summed over them. The query builders
below are shared with the fleet alert rules (``dashboards/rules.py``).
"""

from __future__ import annotations

from typing import Final

from gpt_observatory.dashboards import events
from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards._grafana import Board, Panel, Row, Variable, q
from gpt_observatory.dashboards.boards._common import JOB_VAR
from gpt_observatory.dashboards.query import RANGE, RATE, agg, quantile, rate, ratio, sel
from gpt_observatory.telemetry import names

STATE: Final = s.gauge(names.FLEET_REPLICA_STATE)
ATTEMPTS: Final = s.total(names.FLEET_REPLICA_REQUESTS)
RETRIES: Final = s.total(names.FLEET_RETRIES)
REFUSED: Final = s.total(names.FLEET_UNAVAILABLE)
HEALTHY: Final = f'{s.FLEET_STATE}="healthy"'
# Outcomes that are the replica's failure (a 4xx is the caller's, a cancel nobody's).
FAILED: Final = f'{s.FLEET_OUTCOME}!~"ok|client_error|cancelled"'
PER_POOL: Final = (s.JOB, s.POOL)

POOL_VAR: Final = Variable("pool", "Pool", f"label_values({STATE}{{{s.BY_JOB}}}, {s.POOL})")


def healthy_replicas(*matchers: str, by: tuple[str, ...] = PER_POOL) -> str:
    """Replicas healthy in every process's view, per ``by`` (0, not empty, when none is)."""
    return agg("sum", agg("min", sel(STATE, *matchers, HEALTHY), (*by, s.REPLICA)), by)


def pool_size(*matchers: str, by: tuple[str, ...] = PER_POOL) -> str:
    """Replicas per pool (each reports one series per state; the healthy one counts it once)."""
    return agg("count", agg("max", sel(STATE, *matchers, HEALTHY), (*by, s.REPLICA)), by)


def first_attempts(*matchers: str, by: tuple[str, ...] = PER_POOL, window: str = RATE) -> str:
    """Rate of requests' first attempts: every attempt counted per replica, less the retries
    (each retry is one more attempt)."""
    attempts = rate(ATTEMPTS, *matchers, by=by, window=window)
    return f"({attempts} - ({rate(RETRIES, *matchers, by=by, window=window)} or {attempts} * 0))"


def retry_ratio(*matchers: str, by: tuple[str, ...] = PER_POOL, window: str = RATE, first: str | None = None) -> str:
    """Retries over first attempts (what the pool's retry budget caps); 0 while nothing is retried.
    ``first``: the first attempts' rate already recorded (else :func:`first_attempts`)."""
    first = first or first_attempts(*matchers, by=by, window=window)
    return f"({rate(RETRIES, *matchers, by=by, window=window)} or {first} * 0) / {first}"


def refused_ratio(*matchers: str, by: tuple[str, ...] = PER_POOL, window: str = RATE, first: str | None = None) -> str:
    """Share of a pool's requests refused with no replica to take them (refusals over first
    attempts plus refusals); 0 while none is."""
    first = first or first_attempts(*matchers, by=by, window=window)
    refused = f"({rate(REFUSED, *matchers, by=by, window=window)} or {first} * 0)"
    return f"{refused} / ({first} + {refused})"


def board() -> Board:
    filt = (s.BY_JOB, s.BY_POOL)
    per_replica = (s.POOL, s.REPLICA)
    replica = f"{{{{{s.POOL}}}}}/{{{{{s.REPLICA}}}}}"
    pool = f"{{{{{s.POOL}}}}}"
    return Board(
        uid="observatory-fleet",
        title="Observatory / Fleet",
        description="Replica pools behind the gateway: health, load per replica, ejections, retries and fallbacks.",
        variables=(JOB_VAR, POOL_VAR),
        rows=(
            Row("Pool health", (
                Panel("Healthy replicas per pool",
                      (q(healthy_replicas(*filt, by=(s.POOL,)), f"{pool} healthy"),
                       q(pool_size(*filt, by=(s.POOL,)), f"{pool} replicas")),
                      width=8, needs=events.FLEET,
                      description="Replicas taking requests (in every gateway process's view) beside the pool's size. "
                                  "The PoolBelowHealthy alert fires below the rule's minimum. Envoy: "
                                  "cluster.<name>.membership_healthy, membership_total."),
                Panel("Replicas out of the pool",
                      (q(agg("max", sel(STATE, *filt, f'{s.FLEET_STATE}!="healthy"'), (*per_replica, s.FLEET_STATE)),
                         f"{replica} {{{{{s.FLEET_STATE}}}}}"),),
                      kind="state", width=8, needs=events.FLEET,
                      description="1 while a replica is ejected (passive: consecutive failed attempts, for a backoff "
                                  "that grows per ejection) or unhealthy (its active probes fail). Envoy: "
                                  "cluster.<name>.outlier_detection.ejections_active."),
                Panel("Replica states now",
                      (q(f"{agg('max', sel(STATE, *filt), (*per_replica, s.FLEET_STATE))} == 1"),),
                      kind="table", width=8, needs=events.FLEET,
                      description="Each replica's current state (healthy, ejected or unhealthy); with several gateway "
                                  "processes a replica can be in more than one."),
            )),
            Row("Load per replica", (
                Panel("Attempts per replica by outcome",
                      (q(rate(ATTEMPTS, *filt, by=(*per_replica, s.FLEET_OUTCOME)),
                         f"{replica} {{{{{s.FLEET_OUTCOME}}}}}"),), unit="reqps", stack=True, needs=events.FLEET,
                      description="Every attempt on each replica, retries included. Envoy: "
                                  "cluster.<name>.upstream_rq_<code>, upstream_cx_connect_fail, upstream_rq_timeout."),
                Panel("Replica failure ratio",
                      (q(ratio(ATTEMPTS, FAILED, *filt, by=per_replica), replica),), unit="percentunit",
                      needs=events.FLEET,
                      description="Share of a replica's attempts that failed on its side (connect errors, resets, "
                                  "timeouts, 5xx, broken answers); a caller's 4xx and a caller leaving are not."),
                Panel("Outstanding requests per replica",
                      (q(agg("sum", sel(s.gauge(names.FLEET_REPLICA_OUTSTANDING), *filt), per_replica), replica),),
                      needs=events.FLEET,
                      description="Requests in flight (streams until their last byte): what least-outstanding "
                                  "balancing compares. A replica holding more than its share answers slower. Envoy: "
                                  "cluster.<name>.upstream_rq_active."),
                Panel("Attempt duration per replica",
                      tuple(q(quantile(p, names.FLEET_REPLICA_DURATION, *filt, f'{s.FLEET_OUTCOME}="ok"',
                                       by=per_replica), f"p{round(p * 100)} {replica}") for p in (0.5, 0.95)),
                      unit="s", needs=events.FLEET,
                      description="Successful attempts, to their answer's last byte: one slow replica stands out "
                                  "here before it shows in the pool's latency. Envoy: upstream_rq_time."),
            )),
            Row("Ejections, retries and fallbacks", (
                Panel("Ejections in the time range",
                      (q(rate(s.total(names.FLEET_REPLICA_EJECTIONS), *filt, by=(*per_replica, s.FLEET_OUTCOME),
                              window=RANGE, fn="increase")),), kind="table", width=8, needs=events.REPLICA_EJECTED,
                      description="Passive ejections per replica and the outcome of the attempt that tipped it. "
                                  "Envoy: cluster.<name>.outlier_detection.ejections_enforced_total."),
                Panel("Retry ratio per pool", (q(retry_ratio(*filt, by=(s.POOL,)), pool),), unit="percentunit",
                      width=8, needs=events.FLEET,
                      description="Retries over first attempts. The pool's budget caps it (retry_ratio, 20% by "
                                  "default, plus retry_min); the RetryRatioHigh alert fires above 10%."),
                Panel("Retries by the outcome retried",
                      (q(rate(RETRIES, *filt, by=(s.POOL, s.FLEET_OUTCOME)), f"{pool} {{{{{s.FLEET_OUTCOME}}}}}"),),
                      unit="reqps", width=8, needs=events.FLEET_RETRY,
                      description="Attempts sent to another replica after a connect error, a reset before the "
                                  "headers or a 502/503/504. Envoy: cluster.<name>.upstream_rq_retry."),
                Panel("Retries denied by the budget",
                      (q(rate(s.total(names.FLEET_RETRIES_DENIED), *filt, by=(s.POOL,)), pool),), unit="reqps",
                      width=8, needs=events.RETRY_DENIED,
                      description="Retryable failures passed to the caller because the pool-wide retry budget was "
                                  "spent. Envoy: cluster.<name>.upstream_rq_retry_overflow."),
                Panel("Requests refused with no replica",
                      (q(rate(REFUSED, *filt, by=(s.POOL,)), pool),), unit="reqps", width=8,
                      needs=events.POOL_UNAVAILABLE,
                      description="A pool with no replica able to take a request refuses it (503) and the model's "
                                  "fallbacks take over. Once every replica is out the catalog sends callers to the "
                                  "fallback without asking the pool, so this counts the first refusals, not the "
                                  "outage: see the healthy replicas. Envoy: cluster.<name>.upstream_cx_none_healthy."),
                Panel("Requests served by a fallback",
                      (q(rate(s.total(names.GATEWAY_FALLBACKS), s.BY_JOB, by=(s.CATALOG_MODEL, s.FALLBACK_MODEL)),
                         f"{{{{{s.CATALOG_MODEL}}}}} → {{{{{s.FALLBACK_MODEL}}}}}"),), unit="reqps", width=8,
                      needs=events.FALLBACK,
                      description="Requests for a model whose pool had no healthy replica, served by the first of "
                                  "its catalog fallbacks that had one."),
            )),
        ),
    )
