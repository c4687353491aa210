"""The gates of a promotion. Offline: absolute bounds for every version, relative ones against a
champion. Live: enough traffic first, then absolute bounds and the comparison with the champion."""

from __future__ import annotations

from gpt_observatory.flows.gates import EvalSummary, judge, judge_canary, judge_guard
from gpt_observatory.flows.live import LiveFigures
from gpt_observatory.flows.settings import load_canary_settings, load_settings

OFFLINE_GATES = load_settings().gates()
LIVE_GATES = load_canary_settings(min_requests=50).gates()
HEALTHY = LiveFigures(requests=200, errors=0, p95_duration_s=0.10, p95_ttft_s=0.02, tokens_per_s=500)


def summary(loss: float = 2.5, p95: float = 0.02, golden: float = 1.0, **golden_losses: float) -> EvalSummary:
    return EvalSummary(loss, 12.2, p95 / 2, p95, golden, golden_losses or {"a": 2.0})


def test_first_version_passes_on_absolute_bounds() -> None:
    result = judge(summary(), None, OFFLINE_GATES)
    assert result.passed and result.reason.startswith("first version, passed")


def test_first_version_above_the_loss_bound_is_rejected() -> None:
    result = judge(summary(loss=OFFLINE_GATES["max_loss"] + 1), None, OFFLINE_GATES)
    assert not result.passed and "above the bound" in result.reason


def test_challenger_must_beat_the_champion_by_the_margin() -> None:
    champion = summary(loss=2.5)
    barely = summary(loss=2.5 * (1 - OFFLINE_GATES["min_improvement"] / 2))
    clearly = summary(loss=2.0)
    assert not judge(barely, champion, OFFLINE_GATES).passed
    assert "does not beat the champion" in judge(barely, champion, OFFLINE_GATES).reason
    assert judge(clearly, champion, OFFLINE_GATES).passed


def test_latency_regression_beyond_the_bound_is_rejected() -> None:
    champion = summary(p95=0.020)
    slow = summary(loss=2.0, p95=0.020 * (1 + OFFLINE_GATES["max_latency_regression"]) * 1.1)
    result = judge(slow, champion, OFFLINE_GATES)
    assert not result.passed and "p95 latency" in result.reason


def test_a_regressed_golden_prompt_is_rejected_and_named() -> None:
    champion = summary(a=2.0, b=2.0)
    worse = summary(loss=2.0, a=2.0, b=2.0 + OFFLINE_GATES["golden_tolerance"] + 0.1)
    result = judge(worse, champion, OFFLINE_GATES)
    assert not result.passed and "'b'" in result.reason
    assert result.figures["champion_loss"] == 2.5


# ------------------------------------------------------------------ live
def test_too_little_traffic_on_the_challenger_is_inconclusive_whatever_its_figures():
    few = LiveFigures(requests=49, errors=0, p95_duration_s=0.05, p95_ttft_s=0.01, tokens_per_s=900)
    result = judge_canary(few, HEALTHY, LIVE_GATES)
    assert result.verdict == "inconclusive" and "49 requests" in result.reason


def test_a_challenger_as_good_as_the_champion_passes():
    same = LiveFigures(requests=120, errors=0, p95_duration_s=0.11, p95_ttft_s=0.02, tokens_per_s=480)
    result = judge_canary(same, HEALTHY, LIVE_GATES)
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
        result = judge_canary(challenger, HEALTHY, LIVE_GATES)
        assert result.verdict == "fail" and expected in result.reason, result.reason


def test_a_failing_challenger_is_rejected_even_when_the_champion_is_quiet():
    result = judge_canary(LiveFigures(100, 20, 0.1, None, None), LiveFigures(3), LIVE_GATES)
    assert result.verdict == "fail"


def test_a_good_challenger_against_a_quiet_champion_is_inconclusive():
    result = judge_canary(HEALTHY, LiveFigures(3), LIVE_GATES)
    assert result.verdict == "inconclusive" and "champion had 3 requests" in result.reason


def test_the_guard_breaches_only_on_enough_traffic():
    slow = LiveFigures(requests=30, errors=0, p95_duration_s=45.0)
    assert judge_guard(slow, LIVE_GATES, 20).verdict == "breach"
    assert judge_guard(slow, LIVE_GATES, 40).verdict == "healthy"  # quiet: not enough to judge
    assert judge_guard(HEALTHY, LIVE_GATES, 20).verdict == "healthy"
