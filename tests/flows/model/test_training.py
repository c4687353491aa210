"""Training the reference model: deterministic for a seed, better with more steps, on CUDA when present."""

from __future__ import annotations

import pytest
import torch

from gpt_observatory.flows.model.gpt import ByteTokenizer, generate
from gpt_observatory.flows.model.training import TrainParams, load_corpus, torch_threads, train


def test_training_is_deterministic_for_a_seed() -> None:
    corpus = load_corpus()
    with torch_threads(1):
        a = train(TrainParams(steps=3), corpus, progress=False)
        b = train(TrainParams(steps=3), corpus, progress=False)
        c = train(TrainParams(steps=3, seed=7), corpus, progress=False)
    weights = [list(r.model.state_dict().values()) for r in (a, b, c)]
    assert all(torch.equal(x, y) for x, y in zip(weights[0], weights[1], strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(weights[0], weights[2], strict=True))
    assert a.data_hash.startswith("sha256:") and a.heldout_loss > 0


def test_more_training_lowers_held_out_loss(variants) -> None:
    losses = [variants[v].result.heldout_loss for v in ("weak", "mid", "strong")]
    assert losses == sorted(losses, reverse=True)
    tok = ByteTokenizer()
    greedy = [list(generate(variants["strong"].result.model, tok.encode("In the"), 12, 0.0)) for _ in range(2)]
    assert greedy[0] == greedy[1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (NVIDIA driver + CUDA build of torch)")
def test_trains_and_serves_on_cuda_when_present() -> None:
    from gpt_observatory.flows.model.pyfunc import load_model

    result = train(TrainParams(steps=20), load_corpus(), progress=False)
    assert result.device == "cuda" and result.heldout_loss < 5.0
    served = load_model(result.model.to("cuda"))
    chunks = list(served.predict_stream(None, {"prompt": "In the", "max_tokens": 4, "temperature": 0.0}))
    assert chunks[-1]["completion_tokens"] == len(chunks) - 1
