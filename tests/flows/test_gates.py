"""Promotion gates: absolute bounds for every version, relative ones against a champion."""

from __future__ import annotations

from gpt_observatory.flows.gates import EvalSummary, judge
from gpt_observatory.flows.settings import load_settings

GATES = load_settings().gates()


def summary(loss: float = 2.5, p95: float = 0.02, golden: float = 1.0, **golden_losses: float) -> EvalSummary:
    return EvalSummary(loss, 12.2, p95 / 2, p95, golden, golden_losses or {"a": 2.0})


def test_first_version_passes_on_absolute_bounds() -> None:
    result = judge(summary(), None, GATES)
    assert result.passed and result.reason.startswith("first version, passed")


def test_first_version_above_the_loss_bound_is_rejected() -> None:
    result = judge(summary(loss=GATES["max_loss"] + 1), None, GATES)
    assert not result.passed and "above the bound" in result.reason


def test_challenger_must_beat_the_champion_by_the_margin() -> None:
    champion = summary(loss=2.5)
    barely = summary(loss=2.5 * (1 - GATES["min_improvement"] / 2))
    clearly = summary(loss=2.0)
    assert not judge(barely, champion, GATES).passed
    assert "does not beat the champion" in judge(barely, champion, GATES).reason
    assert judge(clearly, champion, GATES).passed


def test_latency_regression_beyond_the_bound_is_rejected() -> None:
    champion = summary(p95=0.020)
    slow = summary(loss=2.0, p95=0.020 * (1 + GATES["max_latency_regression"]) * 1.1)
    result = judge(slow, champion, GATES)
    assert not result.passed and "p95 latency" in result.reason


def test_a_regressed_golden_prompt_is_rejected_and_named() -> None:
    champion = summary(a=2.0, b=2.0)
    worse = summary(loss=2.0, a=2.0, b=2.0 + GATES["golden_tolerance"] + 0.1)
    result = judge(worse, champion, GATES)
    assert not result.passed and "'b'" in result.reason
    assert result.figures["champion_loss"] == 2.5
