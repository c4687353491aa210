"""The reference model's pyfunc: the interface the gateway loads (``predict`` and ``predict_stream``)."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from gpt_observatory.flows.stores import use


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
