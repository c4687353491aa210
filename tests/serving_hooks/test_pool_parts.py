"""The replica pool's mechanisms on their own: policy validation, the balancers, the retry budget and
outlier ejection, as plain state with explicit clocks."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpt_observatory.serving_hooks.backends._balance import LatencyWeighted, LeastOutstanding, RetryBudget, RoundRobin
from gpt_observatory.serving_hooks.backends._health import Outliers, Replica
from gpt_observatory.serving_hooks.backends.pool import PoolPolicy, ReplicaSpec


@dataclass
class Load:
    weight: float
    outstanding: int = 0
    rr_current: float = 0.0
    rtt_s: float = 0.03
    rtt_at: int = 0


def test_an_unknown_policy_key_or_a_bad_value_is_refused_by_name():
    with pytest.raises(TypeError, match="probe_intervall_s"):
        PoolPolicy(**{"probe_intervall_s": 1.0})
    for table, field in (({"balancer": "random"}, "balancer"), ({"max_attempts": 0}, "max_attempts"),
                         ({"max_ejected_share": 1.5}, "max_ejected_share"), ({"probe_path": "health"}, "probe_path"),
                         ({"base_ejection_s": 0}, "base_ejection_s"), ({"retry_ratio": -0.1}, "retry_ratio")):
        with pytest.raises(ValueError, match=field):
            PoolPolicy(**table)
    with pytest.raises(ValueError, match="weight"):
        ReplicaSpec("http://h/v1", "a", weight=0)


@given(st.lists(st.integers(1, 5), min_size=1, max_size=6), st.integers(1, 4))
def test_round_robin_gives_each_replica_its_weight_share_exactly(weights, rounds):
    loads = [Load(float(w)) for w in weights]
    rr = RoundRobin()
    picks = [rr.pick(loads) for _ in range(sum(weights) * rounds)]
    assert [sum(p is ld for p in picks) for ld in loads] == [w * rounds for w in weights]


@given(st.lists(st.integers(0, 50), min_size=2, max_size=8), st.integers(0, 2**32))
def test_least_outstanding_never_picks_the_single_busiest_replica(outstanding, seed):
    loads = [Load(1.0, o) for o in outstanding]
    top = max(outstanding)
    busiest = [ld for ld in loads if ld.outstanding == top]
    choice = LeastOutstanding(random.Random(seed)).pick(loads)
    if len(busiest) == 1 and len(set(outstanding)) > 1:
        assert choice is not busiest[0]


def test_least_outstanding_follows_weights_between_idle_replicas():
    heavy, light = Load(3.0), Load(1.0)
    lor = LeastOutstanding(random.Random(7))
    picks = [lor.pick([heavy, light]) for _ in range(200)]
    assert all(p is heavy for p in picks)  # (0+1)/3 < (0+1)/1: the heavier idle replica wins every draw
    heavy.outstanding = 3  # 4/3 > 1/1
    assert lor.pick([heavy, light]) is light


def test_latency_weighted_keeps_a_slow_replica_out_until_its_estimate_decays():
    lw = LatencyWeighted(decay_answers=100, rng=random.Random(3))
    slow, fast = Load(1.0), Load(1.0)
    for _ in range(4):
        lw.observe(slow, 0.2)
        lw.observe(fast, 0.02)
    assert 0.17 < lw.estimate(slow) < 0.2 and 0.02 <= lw.estimate(fast) < 0.025
    fast.outstanding = 5  # 6 x 0.02 < 0.2: still cheaper than the idle slow replica
    assert all(lw.pick([slow, fast]) is fast for _ in range(100))
    fast.outstanding = 10  # 11 x 0.02 > 0.2: now the slow one is worth it (least-outstanding would have gone at 1)
    assert lw.pick([slow, fast]) is slow
    # While the others answer and it does not, its estimate decays toward 0 (e per decay_answers), so an
    # avoided replica is tried again; time alone (an idle pool) changes nothing.
    before = lw.estimate(slow)
    for _ in range(100):
        lw.observe(fast, 0.02)
    assert lw.estimate(slow) == pytest.approx(before / math.e)
    fast.outstanding = 0
    assert lw.estimate(fast) == pytest.approx(0.02)


@given(st.lists(st.tuples(st.floats(0, 10), st.booleans()), min_size=1, max_size=50))
def test_latency_weighted_a_failed_attempt_never_lowers_an_estimate(samples):
    lw = LatencyWeighted(decay_answers=1000)
    replica = Load(1.0)
    for seconds, failed in samples:
        before = lw.estimate(replica)
        lw.observe(replica, seconds, raise_only=failed)
        after = lw.estimate(replica)
        if failed:
            assert after >= before
        else:  # an answer moves it halfway to its own time
            assert after == pytest.approx((before + seconds) / 2)


@given(st.lists(st.tuples(st.floats(0, 30), st.booleans()), max_size=200), st.floats(0, 1), st.integers(0, 5))
def test_the_retry_budget_holds_its_ratio_over_its_window(events, ratio, minimum):
    budget = RetryBudget(ratio, minimum, 10)
    granted: list[float] = []
    requests: list[float] = []
    for now, is_retry in sorted(events):
        if not is_retry:
            budget.request(now)
            requests.append(now)
        elif budget.try_retry(now):
            granted.append(now)
            # Granted only while the retries of the window (now-10, now], this one included, fit its budget.
            lo = int(now) - 10
            in_window = sum(1 for t in granted if int(t) > lo)
            assert in_window <= ratio * sum(1 for t in requests if int(t) > lo) + minimum
    if minimum and not events:
        assert budget.try_retry(0.0)  # a quiet pool may still retry


def _pool(n: int, **policy) -> tuple[Outliers, list[Replica]]:
    pol = PoolPolicy(**policy)
    replicas = [Replica(ReplicaSpec(f"http://h{i}/v1", f"r{i}"), None, f"h{i}", 80, "", {}) for i in range(n)]
    return Outliers(pol, replicas), replicas


def test_consecutive_failures_eject_for_a_backoff_that_grows_then_decays():
    outliers, (a, b) = _pool(2, consecutive_errors=3, base_ejection_s=10, max_ejection_s=25, max_ejected_share=1.0)
    assert outliers.record(a, "reset", 0) is None and outliers.record(a, "ok", 0) is None  # a success resets
    assert [outliers.record(a, "connect_error", 1) for _ in range(3)] == [None, None, 10]
    assert a.state(5) == "ejected" and not a.available(5) and a.available(11)
    assert [outliers.record(a, "server_error", 11) for _ in range(3)][-1] == 20  # second in a row: twice as long
    assert [outliers.record(a, "timeout", 31) for _ in range(3)][-1] == 25  # third: capped at max_ejection_s
    # 4 base periods back in the pool take the multiplier from 3 down to 0: the next ejection is the first again.
    assert [outliers.record(a, "reset", 96) for _ in range(3)][-1] == 10
    assert outliers.record(b, "client_error", 0) is None and outliers.record(b, "cancelled", 0) is None
    assert b.consecutive_errors == 0


def test_at_most_the_configured_share_is_ejected_at_once():
    outliers, replicas = _pool(4, consecutive_errors=1, max_ejected_share=0.5)
    ejected = [outliers.record(r, "reset", 0) for r in replicas]
    assert [e is not None for e in ejected] == [True, True, False, False]
    assert [r.state(1) for r in replicas] == ["ejected", "ejected", "healthy", "healthy"]
    outliers, (only,) = _pool(1, consecutive_errors=1, max_ejected_share=0.0)
    assert outliers.record(only, "reset", 0) is not None  # always at least one


def test_probes_mark_unhealthy_and_readmit_an_ejected_replica():
    outliers, (a,) = _pool(1, consecutive_errors=1, healthy_threshold=2, unhealthy_threshold=2, base_ejection_s=60)
    outliers.record(a, "connect_error", 0)
    assert a.state(1) == "ejected"
    assert outliers.probed(a, False, 1) is False and outliers.probed(a, False, 2) is False
    assert a.state(3) == "unhealthy"
    assert outliers.probed(a, True, 3) is False  # one pass is not enough
    assert outliers.probed(a, True, 4) is True and a.state(4) == "healthy"  # readmitted long before 60 s
    outliers, (b,) = _pool(1, consecutive_errors=1, base_ejection_s=60, probe_readmits=False)
    outliers.record(b, "reset", 0)
    outliers.probed(b, True, 1), outliers.probed(b, True, 2)
    assert b.state(3) == "ejected" and b.available(61)
