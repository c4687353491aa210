"""The reference model: byte tokenizer, deterministic training, and the pyfunc interface the
gateway loads (``predict`` and ``predict_stream``)."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
import torch

from gpt_observatory.flows.gpt import ByteTokenizer, generate
from gpt_observatory.flows.stores import use
from gpt_observatory.flows.training import TrainParams, load_corpus, torch_threads, train


def test_tokens_are_utf8_bytes() -> None:
    tok = ByteTokenizer()
    assert tok.encode("café") == list("café".encode())
    assert len(tok.encode("café")) == 5
    assert tok.decode(tok.encode("naïve ☃")) == "naïve ☃"


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


@pytest.fixture(scope="module")
def served(pg_models):
    """The strong variant as logged by the flows, loaded back through MLflow."""
    _, source, _ = pg_models._log("strong")
    use(pg_models.uri)
    return mlflow.pyfunc.load_model(source)


def test_pyfunc_predict_takes_rows_and_counts_bytes(served) -> None:
    rows = served.predict([{"prompt": "café", "max_tokens": 5, "temperature": 0.0},
                           {"prompt": "To be", "max_tokens": 3, "temperature": 0.5}])
    assert [r["prompt_tokens"] for r in rows] == [5, 5]
    assert [r["completion_tokens"] for r in rows] == [5, 3]
    assert all(r["finish_reason"] in ("length", "stop") and isinstance(r["text"], str) for r in rows)
    frame = served.predict(pd.DataFrame([{"prompt": "Alice"}]))
    assert frame[0]["completion_tokens"] == 32  # default max_tokens
    assert served.metadata.get_input_schema().input_names() == ["prompt", "max_tokens", "temperature"]


def test_pyfunc_streams_one_chunk_per_token_then_a_summary(served) -> None:
    chunks = list(served.predict_stream({"prompt": "In the beginning", "max_tokens": 6, "temperature": 0.0}))
    *pieces, last = chunks
    assert all(set(p) == {"text"} for p in pieces)
    assert last["text"] == "" and last["prompt_tokens"] == 16
    assert last["completion_tokens"] == len(pieces) <= 6
    assert last["finish_reason"] == ("length" if len(pieces) == 6 else "stop")
    whole = served.predict([{"prompt": "In the beginning", "max_tokens": 6, "temperature": 0.0}])[0]
    assert "".join(p["text"] for p in pieces) == whole["text"]


def test_pyfunc_refuses_bad_input(served) -> None:
    with pytest.raises(Exception, match="max_tokens"):
        served.predict([{"prompt": "x", "max_tokens": -1}])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (NVIDIA driver + CUDA build of torch)")
def test_trains_and_serves_on_cuda_when_present() -> None:
    from gpt_observatory.flows.pyfunc import load_model

    result = train(TrainParams(steps=20), load_corpus(), progress=False)
    assert result.device == "cuda" and result.heldout_loss < 5.0
    served = load_model(result.model.to("cuda"))
    chunks = list(served.predict_stream(None, {"prompt": "In the", "max_tokens": 4, "temperature": 0.0}))
    assert chunks[-1]["completion_tokens"] == len(chunks) - 1
