"""Promotion gates: may a challenger replace the champion? Pure functions over eval figures."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


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
