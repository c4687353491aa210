"""A pool replica's health: passive outlier ejection from the outcomes of real requests, and
active probes. Plain state and decisions; the pool owns the tasks and the telemetry.

Passive ejection follows Envoy's outlier detection: ``consecutive_errors`` failed attempts in a row
(connection errors, resets, timeouts, 5xx, broken answers) eject a replica for
``base_ejection_s`` times the number of times it was ejected, at most ``max_ejection_s``; that
multiplier drops by one for each ``base_ejection_s`` the replica then stays in, so a replica that
fails once a day is not punished as one that flaps. At most ``max_ejected_share`` of the pool (and
always at least one replica) is ejected at once: past that, a failing replica keeps its traffic
rather than the rest being overloaded. An ejected replica is readmitted when its time is over, or
earlier when ``healthy_threshold`` probes in a row pass (Envoy's
``successful_active_health_check_uneject_host``).

Active probes mark a replica ``unhealthy`` after ``unhealthy_threshold`` failures in a row and
healthy again after ``healthy_threshold`` passes (Envoy's health-check thresholds). Replicas start
healthy, so a pool takes traffic before its first probe round.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpt_observatory.serving_hooks.backends.pool import PoolPolicy, ReplicaSpec

# Outcomes that count as the replica's failure (names.FLEET_OUTCOMES); the others reset the streak.
FAILURES = frozenset(("connect_error", "reset", "timeout", "server_error", "bad_status", "answer_failed", "error"))
NEUTRAL = frozenset(("cancelled",))  # neither a failure nor a success of the replica's
DEFAULT_RTT_S = 0.03  # seconds per output token of a replica not yet measured (Linkerd's default latency)


class Replica:
    """One replica's live state. ``backend`` is the upstream client it is called through."""

    __slots__ = ("address", "attrs", "backend", "consecutive_errors", "ejected_until", "ejections", "name",
                 "outcome_attrs", "outstanding", "port", "probe_fails", "probe_ok", "probe_passes", "probe_url",
                 "rr_current", "rtt_at", "rtt_s", "spec", "weight")

    def __init__(self, spec: ReplicaSpec, backend: Any, address: str, port: int | None, probe_url: str,
                 attrs: dict[str, str]) -> None:
        self.spec, self.backend, self.name, self.weight = spec, backend, spec.name, spec.weight
        self.address, self.port, self.probe_url = address, port, probe_url
        self.attrs = attrs
        self.outcome_attrs: dict[str, dict[str, str]] = {}
        self.outstanding = 0
        self.rr_current = 0.0
        self.rtt_s = DEFAULT_RTT_S  # the latency-weighted balancer's estimate (s per output token), until answers come
        self.rtt_at = 0  # the balancer's answer count at its last answer
        self.consecutive_errors = 0
        self.ejected_until = 0.0  # monotonic; in while now < ejected_until is false
        self.ejections = 0  # the backoff multiplier
        self.probe_ok = True
        self.probe_passes = 0
        self.probe_fails = 0

    def available(self, now: float) -> bool:
        return self.probe_ok and now >= self.ejected_until

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def state(self, now: float) -> str:
        if not self.probe_ok:
            return "unhealthy"
        return "ejected" if self.ejected(now) else "healthy"

    def with_outcome(self, outcome: str) -> dict[str, str]:
        attrs = self.outcome_attrs.get(outcome)
        if attrs is None:
            from gpt_observatory.telemetry import names

            attrs = self.outcome_attrs[outcome] = {**self.attrs, names.FLEET_OUTCOME: outcome}
        return attrs


class Outliers:
    """Passive ejection and probe bookkeeping for one pool (see the module docstring)."""

    def __init__(self, policy: PoolPolicy, replicas: list[Replica]) -> None:
        self.policy = policy
        self.replicas = replicas
        self.max_ejected = max(1, math.floor(policy.max_ejected_share * len(replicas)))

    def record(self, replica: Replica, outcome: str, now: float) -> float | None:
        """Count one attempt's outcome; the ejection time in seconds when this one ejects the replica."""
        if outcome in NEUTRAL:
            return None
        if outcome not in FAILURES:
            replica.consecutive_errors = 0
            return None
        replica.consecutive_errors += 1
        if replica.consecutive_errors < self.policy.consecutive_errors or replica.ejected(now):
            return None
        if sum(r.ejected(now) for r in self.replicas) >= self.max_ejected:
            return None  # the pool's share is used up: keep it in rather than overload the others
        return self.eject(replica, now)

    def eject(self, replica: Replica, now: float) -> float:
        policy = self.policy
        if replica.ejections and replica.ejected_until:
            stayed = max(0.0, now - replica.ejected_until)
            replica.ejections = max(0, replica.ejections - int(stayed / policy.base_ejection_s))
        replica.ejections += 1
        seconds = min(policy.base_ejection_s * replica.ejections, policy.max_ejection_s)
        replica.ejected_until = now + seconds
        replica.consecutive_errors = 0
        replica.probe_passes = 0
        return seconds

    def probed(self, replica: Replica, passed: bool, now: float) -> bool:
        """Count one probe; True when it changed whether the replica takes requests."""
        before = replica.available(now)
        policy = self.policy
        if passed:
            replica.probe_fails = 0
            replica.probe_passes += 1
            if replica.probe_passes >= policy.healthy_threshold:
                replica.probe_ok = True
                if replica.ejected(now) and policy.probe_readmits:
                    replica.ejected_until = now
        else:
            replica.probe_passes = 0
            replica.probe_fails += 1
            if replica.probe_fails >= policy.unhealthy_threshold:
                replica.probe_ok = False
        return before != replica.available(now)
