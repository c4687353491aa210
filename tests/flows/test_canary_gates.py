"""The live gates: enough traffic first, then absolute bounds and the comparison with the champion."""

from __future__ import annotations

from gpt_observatory.flows.canary_gates import judge_canary, judge_guard
from gpt_observatory.flows.canary_settings import load_canary_settings
from gpt_observatory.flows.live import LiveFigures

GATES = load_canary_settings(min_requests=50).gates()
HEALTHY = LiveFigures(requests=200, errors=0, p95_duration_s=0.10, p95_ttft_s=0.02, tokens_per_s=500)


def test_too_little_traffic_on_the_challenger_is_inconclusive_whatever_its_figures():
    few = LiveFigures(requests=49, errors=0, p95_duration_s=0.05, p95_ttft_s=0.01, tokens_per_s=900)
    result = judge_canary(few, HEALTHY, GATES)
    assert result.verdict == "inconclusive" and "49 requests" in result.reason


def test_a_challenger_as_good_as_the_champion_passes():
    same = LiveFigures(requests=120, errors=0, p95_duration_s=0.11, p95_ttft_s=0.02, tokens_per_s=480)
    result = judge_canary(same, HEALTHY, GATES)
    assert result.verdict == "pass", result.reason
    assert result.figures["challenger_requests"] == 120 and result.figures["champion_p95_s"] == 0.1


def test_each_gate_fails_on_its_own_and_says_why():
    cases = {
        "error rate 10.00% above the bound": LiveFigures(100, 10, 0.1, 0.02, 500),
        "p95 request duration 150 ms regresses past 135 ms": LiveFigures(100, 0, 0.15, 0.02, 500),
        "p95 time to first token 500 ms regresses": LiveFigures(100, 0, 0.1, 0.5, 500),
        "300 tokens/s drops under 375": LiveFigures(100, 0, 0.1, 0.02, 300),
    }
    for expected, challenger in cases.items():
        result = judge_canary(challenger, HEALTHY, GATES)
        assert result.verdict == "fail" and expected in result.reason, result.reason


def test_a_failing_challenger_is_rejected_even_when_the_champion_is_quiet():
    result = judge_canary(LiveFigures(100, 20, 0.1, None, None), LiveFigures(3), GATES)
    assert result.verdict == "fail"


def test_a_good_challenger_against_a_quiet_champion_is_inconclusive():
    result = judge_canary(HEALTHY, LiveFigures(3), GATES)
    assert result.verdict == "inconclusive" and "champion had 3 requests" in result.reason


def test_the_guard_breaches_only_on_enough_traffic():
    slow = LiveFigures(requests=30, errors=0, p95_duration_s=45.0)
    assert judge_guard(slow, GATES, 20).verdict == "breach"
    assert judge_guard(slow, GATES, 40).verdict == "healthy"  # quiet: not enough to judge
    assert judge_guard(HEALTHY, GATES, 20).verdict == "healthy"
