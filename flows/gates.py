"""The gates of a promotion, as pure functions over figures: decisions as data, reasons in words.

- Offline (:func:`judge`, the ``promote`` flow): may a challenger replace the champion, by its
  evaluation figures (:class:`EvalSummary`)?
- Live (:func:`judge_canary`, :func:`judge_guard`, the ``canary`` and ``guard`` flows): may the
  challenger replace the champion, and is a new champion breaching its SLO, by the live figures
  read from Prometheus (:class:`~gpt_observatory.flows.live.LiveFigures`)?
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from gpt_observatory.flows.live import LiveFigures

Verdict = Literal["pass", "fail", "inconclusive", "healthy", "breach"]


# ------------------------------------------------------------------ offline
@dataclass(frozen=True, slots=True)
class EvalSummary:
    """Evaluation figures of one model version on one evaluation set."""

    heldout_loss: float
    perplexity: float
    latency_p50_s: float
    latency_p95_s: float
    golden_pass_rate: float
    golden_losses: dict[str, float] = field(default_factory=dict)
    eval_data: str = ""  # identifies the held-out split and golden set the figures come from
    run_id: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EvalSummary:
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class GateResult:
    passed: bool
    reason: str
    figures: dict[str, Any]


def judge(challenger: EvalSummary, champion: EvalSummary | None, gates: dict[str, float]) -> GateResult:
    """Every gate is checked; the reason lists each failed one, or the evidence for passing.

    Absolute bounds apply to every version (the first has nothing else to beat); with a
    champion, the challenger must also lower held-out loss by ``min_improvement`` (relative),
    keep p95 latency within ``max_latency_regression`` and no golden prompt may get worse by
    more than ``golden_tolerance``.
    """
    failed: list[str] = []
    passed: list[str] = []

    def check(ok: bool, good: str, bad: str) -> None:
        (passed if ok else failed).append(good if ok else bad)

    c = challenger
    check(c.heldout_loss <= gates["max_loss"],
          f"loss {c.heldout_loss:.4f} <= {gates['max_loss']}",
          f"held-out loss {c.heldout_loss:.4f} above the bound {gates['max_loss']}")
    check(c.latency_p95_s <= gates["max_latency_p95_s"],
          f"p95 {c.latency_p95_s * 1e3:.1f} ms <= {gates['max_latency_p95_s'] * 1e3:.0f} ms",
          f"p95 latency {c.latency_p95_s * 1e3:.1f} ms above the bound {gates['max_latency_p95_s'] * 1e3:.0f} ms")
    check(c.golden_pass_rate >= gates["min_golden_pass_rate"],
          f"golden pass rate {c.golden_pass_rate:.2f} >= {gates['min_golden_pass_rate']}",
          f"golden pass rate {c.golden_pass_rate:.2f} below {gates['min_golden_pass_rate']}")
    figures: dict[str, Any] = {
        "challenger_loss": c.heldout_loss,
        "challenger_perplexity": c.perplexity,
        "challenger_p95_s": c.latency_p95_s,
        "challenger_golden_pass_rate": c.golden_pass_rate,
        "gates": gates,
    }
    if champion is not None:
        need = champion.heldout_loss * (1.0 - gates["min_improvement"])
        check(c.heldout_loss <= need,
              f"loss {c.heldout_loss:.4f} <= {need:.4f} (champion {champion.heldout_loss:.4f} "
              f"- {gates['min_improvement']:.1%})",
              f"held-out loss {c.heldout_loss:.4f} does not beat the champion's {champion.heldout_loss:.4f} "
              f"by {gates['min_improvement']:.1%} (needs <= {need:.4f})")
        bound = champion.latency_p95_s * (1.0 + gates["max_latency_regression"])
        check(c.latency_p95_s <= bound,
              f"p95 {c.latency_p95_s * 1e3:.1f} ms <= {bound * 1e3:.1f} ms",
              f"p95 latency {c.latency_p95_s * 1e3:.1f} ms regresses past {bound * 1e3:.1f} ms "
              f"(champion {champion.latency_p95_s * 1e3:.1f} ms + {gates['max_latency_regression']:.0%})")
        worse = {
            key: round(loss - champion.golden_losses[key], 4)
            for key, loss in c.golden_losses.items()
            if key in champion.golden_losses and loss > champion.golden_losses[key] + gates["golden_tolerance"]
        }
        check(not worse, "no golden prompt regressed",
              f"golden prompts regressed by more than {gates['golden_tolerance']} nats/byte: {worse}")
        figures.update(
            champion_loss=champion.heldout_loss,
            champion_p95_s=champion.latency_p95_s,
            champion_golden_pass_rate=champion.golden_pass_rate,
        )
    reason = ("rejected: " + "; ".join(failed)) if failed else ("passed: " + "; ".join(passed))
    if champion is None and not failed:
        reason = "first version, " + reason
    return GateResult(passed=not failed, reason=reason, figures=figures)


# ------------------------------------------------------------------ live
@dataclass(frozen=True, slots=True)
class LiveResult:
    verdict: Verdict
    reason: str
    figures: dict[str, Any]


def _absolute(f: LiveFigures, gates: dict[str, float], who: str) -> tuple[list[str], list[str]]:
    """(failed, passed) checks of ``f`` against the absolute bounds."""
    failed: list[str] = []
    passed: list[str] = []

    def check(ok: bool, good: str, bad: str) -> None:
        (passed if ok else failed).append(good if ok else bad)

    check(f.error_rate <= gates["max_error_rate"],
          f"error rate {f.error_rate:.2%} <= {gates['max_error_rate']:.2%}",
          f"{who} error rate {f.error_rate:.2%} above the bound {gates['max_error_rate']:.2%} "
          f"({f.errors:.0f} of {f.requests:.0f} requests)")
    if f.p95_duration_s is not None:
        check(f.p95_duration_s <= gates["max_p95_duration_s"],
              f"p95 {f.p95_duration_s * 1e3:.0f} ms <= {gates['max_p95_duration_s'] * 1e3:.0f} ms",
              f"{who} p95 request duration {f.p95_duration_s * 1e3:.0f} ms above the bound "
              f"{gates['max_p95_duration_s'] * 1e3:.0f} ms")
    if f.p95_ttft_s is not None:
        check(f.p95_ttft_s <= gates["max_p95_ttft_s"],
              f"p95 TTFT {f.p95_ttft_s * 1e3:.0f} ms <= {gates['max_p95_ttft_s'] * 1e3:.0f} ms",
              f"{who} p95 time to first token {f.p95_ttft_s * 1e3:.0f} ms above the bound "
              f"{gates['max_p95_ttft_s'] * 1e3:.0f} ms")
    if gates["min_tokens_per_s"] > 0 and f.tokens_per_s is not None:
        check(f.tokens_per_s >= gates["min_tokens_per_s"],
              f"{f.tokens_per_s:.0f} tokens/s >= {gates['min_tokens_per_s']:.0f}",
              f"{who} generates {f.tokens_per_s:.0f} tokens/s, under the floor {gates['min_tokens_per_s']:.0f}")
    return failed, passed


def _relative(c: LiveFigures, i: LiveFigures, gates: dict[str, float]) -> tuple[list[str], list[str]]:
    """(failed, passed) checks of challenger ``c`` against champion ``i``."""
    failed: list[str] = []
    passed: list[str] = []
    tol = gates["latency_tolerance_s"]

    def check(ok: bool, good: str, bad: str) -> None:
        (passed if ok else failed).append(good if ok else bad)

    bound = i.error_rate + gates["max_error_rate_increase"]
    check(c.error_rate <= bound, f"error rate {c.error_rate:.2%} <= champion's {i.error_rate:.2%} + "
          f"{gates['max_error_rate_increase']:.2%}",
          f"error rate {c.error_rate:.2%} exceeds the champion's {i.error_rate:.2%} by more than "
          f"{gates['max_error_rate_increase']:.2%}")
    for label, mine, theirs, key in (
        ("p95 request duration", c.p95_duration_s, i.p95_duration_s, "max_p95_duration_regression"),
        ("p95 time to first token", c.p95_ttft_s, i.p95_ttft_s, "max_p95_ttft_regression"),
    ):
        if mine is None or theirs is None:
            continue
        limit = theirs * (1 + gates[key]) + tol
        check(mine <= limit, f"{label} {mine * 1e3:.0f} ms <= {limit * 1e3:.0f} ms",
              f"{label} {mine * 1e3:.0f} ms regresses past {limit * 1e3:.0f} ms (champion "
              f"{theirs * 1e3:.0f} ms + {gates[key]:.0%} + {tol * 1e3:.0f} ms)")
    if c.tokens_per_s is not None and i.tokens_per_s is not None:
        floor = i.tokens_per_s * (1 - gates["max_tokens_per_s_drop"])
        check(c.tokens_per_s >= floor, f"{c.tokens_per_s:.0f} tokens/s >= {floor:.0f}",
              f"{c.tokens_per_s:.0f} tokens/s drops under {floor:.0f} (champion {i.tokens_per_s:.0f} - "
              f"{gates['max_tokens_per_s_drop']:.0%})")
    return failed, passed


def judge_canary(challenger: LiveFigures, champion: LiveFigures, gates: dict[str, float],
                 source: str = "live") -> LiveResult:
    """``pass`` only with enough traffic on both sides and every gate met; ``fail`` when the
    challenger, on enough traffic, misses any gate; else ``inconclusive`` (never a promotion).

    ``source``: where the figures come from, named in the reason (``live``: users' requests;
    ``shadow``: mirrored requests no user saw)."""
    on = "live" if source == "live" else "on shadow traffic"
    need = gates["min_requests"]
    figures: dict[str, Any] = {**challenger.as_dict("challenger"), **champion.as_dict("champion"), "gates": gates}
    if challenger.requests < need:
        return LiveResult("inconclusive", f"too little traffic: the challenger had {challenger.requests:.0f} "
                          f"requests in the window, {need:.0f} needed", figures)
    failed, passed = _absolute(challenger, gates, "challenger")
    if champion.requests >= need:
        more_failed, more_passed = _relative(challenger, champion, gates)
        failed, passed = failed + more_failed, passed + more_passed
    if failed:
        return LiveResult("fail", f"rejected {on}: " + "; ".join(failed), figures)
    if champion.requests < need:
        return LiveResult("inconclusive", f"too little traffic: the champion had {champion.requests:.0f} "
                          f"requests in the window, {need:.0f} needed to compare", figures)
    return LiveResult("pass", f"passed {on}: " + "; ".join(passed), figures)


def judge_guard(champion: LiveFigures, gates: dict[str, float], min_requests: float) -> LiveResult:
    """``breach`` when the champion, on at least ``min_requests``, misses an absolute bound."""
    figures: dict[str, Any] = {**champion.as_dict("champion"), "gates": gates}
    if champion.requests < min_requests:
        return LiveResult("healthy", f"quiet: {champion.requests:.0f} requests in the guard window "
                          f"({min_requests:.0f} before a breach counts)", figures)
    failed, passed = _absolute(champion, gates, "champion")
    if failed:
        return LiveResult("breach", "SLO breach: " + "; ".join(failed), figures)
    return LiveResult("healthy", "within SLO: " + "; ".join(passed), figures)
