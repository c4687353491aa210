"""Evaluate a logged model through its pyfunc: held-out loss and perplexity, latency p50/p95,
and golden-prompt checks (the loss of a known continuation, and the greedy completion).

Returns plain figures; the flows record them as MLflow metrics, version tags and gauges.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from gpt_observatory.flows.gates import EvalSummary
from gpt_observatory.flows.model import gpt
from gpt_observatory.flows.model.training import Corpus, data_file


@dataclass(frozen=True, slots=True)
class GoldenPrompt:
    id: str
    prompt: str
    expected: str


@dataclass(frozen=True, slots=True)
class Evaluation:
    summary: EvalSummary
    golden_rows: list[dict[str, Any]]  # one row per golden prompt: for a table artifact
    latencies_s: list[float]


def golden_prompts() -> list[GoldenPrompt]:
    raw = data_file("golden.json").read_text()
    return [GoldenPrompt(**item) for item in json.loads(raw)]


def eval_data_id(corpus: Corpus, heldout_fraction: float, golden: list[GoldenPrompt]) -> str:
    """Identifies the evaluation set: figures are comparable only between equal ids."""
    payload = json.dumps([corpus.data_hash, heldout_fraction, [(g.id, g.prompt, g.expected) for g in golden]])
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()[:16]


@torch.no_grad()
def continuation_loss(model: gpt.TinyGPT, prompt: str, expected: str) -> float:
    """Mean loss (nats/byte) of ``expected`` following ``prompt``, teacher-forced."""
    tok = gpt.ByteTokenizer()
    context, target = tok.encode(prompt), tok.encode(expected)
    seq = (context + target)[-(model.cfg.context + 1) :]
    n_target = min(len(target), len(seq) - 1)
    device = next(model.parameters()).device
    idx = torch.tensor([seq], dtype=torch.long, device=device)
    logits = model(idx[:, :-1])[0, -n_target:]
    return float(F.cross_entropy(logits, idx[0, -n_target:]))


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def measure_latency(models: list[Any], samples: int, max_tokens: int) -> list[list[float]]:
    """Seconds per ``predict`` call (greedy, ``max_tokens`` each) of every model, interleaved
    call by call so that models measured together see the same machine load."""
    golden = golden_prompts()
    request = [{"prompt": golden[0].prompt, "max_tokens": max_tokens, "temperature": 0.0}]
    for model in models:
        model.predict(request)  # warm-up: the first call pays one-off allocation costs
    out: list[list[float]] = [[] for _ in models]
    for i in range(samples):
        request[0]["prompt"] = golden[i % len(golden)].prompt
        for model, latencies in zip(models, out, strict=True):
            started = time.perf_counter()
            model.predict(request)
            latencies.append(time.perf_counter() - started)
    return out


def latency_figures(latencies: list[float]) -> tuple[float, float]:
    """(p50, p95) in seconds."""
    return statistics.median(latencies), _percentile(latencies, 95)


def evaluate(
    pyfunc_model: Any,
    corpus: Corpus,
    heldout_fraction: float,
    latency_samples: int,
    max_tokens: int,
    max_golden_loss: float,
) -> Evaluation:
    """Evaluate a model loaded with ``mlflow.pyfunc.load_model``."""
    inner = pyfunc_model.unwrap_python_model()
    network = inner.model
    golden = golden_prompts()
    heldout = gpt.mean_loss(network, corpus.heldout)

    rows = []
    completions = pyfunc_model.predict(
        [{"prompt": g.prompt, "max_tokens": len(g.expected.encode()), "temperature": 0.0} for g in golden]
    )
    for g, out in zip(golden, completions, strict=True):
        loss = continuation_loss(network, g.prompt, g.expected)
        rows.append({"id": g.id, "prompt": g.prompt, "expected": g.expected, "completion": out["text"],
                     "loss": round(loss, 4), "passed": loss <= max_golden_loss,
                     "finish_reason": out["finish_reason"]})

    latencies = measure_latency([pyfunc_model], latency_samples, max_tokens)[0]
    summary = EvalSummary(
        heldout_loss=heldout,
        perplexity=gpt.perplexity(heldout),
        latency_p50_s=latency_figures(latencies)[0],
        latency_p95_s=latency_figures(latencies)[1],
        golden_pass_rate=sum(r["passed"] for r in rows) / len(rows),
        golden_losses={r["id"]: r["loss"] for r in rows},
        eval_data=eval_data_id(corpus, heldout_fraction, golden),
    )
    return Evaluation(summary=summary, golden_rows=rows, latencies_s=latencies)
