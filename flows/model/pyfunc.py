"""The reference model as an MLflow pyfunc: ``predict`` and ``predict_stream``.

The interface the gateway relies on (``mlflow.pyfunc.load_model("models:/tiny-gpt@champion")``):

- ``predict(rows)``: a DataFrame or list of dicts with ``prompt``, optional ``max_tokens``
  (default 32) and ``temperature`` (default 0.8); returns one dict per row with ``text``,
  ``prompt_tokens``, ``completion_tokens`` and ``finish_reason`` (``length`` | ``stop``).
- ``predict_stream(row)``: one dict; yields ``{"text": piece}`` per generated token, then
  ``{"text": "", "finish_reason", "prompt_tokens", "completion_tokens"}``.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from gpt_observatory.flows.model import gpt
from gpt_observatory.generation import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, MAX_TOKENS_LIMIT

SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("string", "prompt"),
            # Optional as a column: a batch either gives it for every row or for none (MLflow
            # refuses NaN in a long column, and ints in a double one).
            ColSpec("long", "max_tokens", required=False),
            ColSpec("double", "temperature", required=False),
        ]
    ),
    outputs=Schema(
        [
            ColSpec("string", "text"),
            ColSpec("long", "prompt_tokens"),
            ColSpec("long", "completion_tokens"),
            ColSpec("string", "finish_reason"),
        ]
    ),
)
INPUT_EXAMPLE = [{"prompt": "To be, or not to be", "max_tokens": 16, "temperature": 0.8}]


@dataclass(frozen=True, slots=True)
class Request:
    prompt: str
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE

    @classmethod
    def parse(cls, row: Mapping[str, Any]) -> Request:
        prompt = row.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError("each input needs a 'prompt' string")
        max_tokens = _or_default(row.get("max_tokens"), DEFAULT_MAX_TOKENS)
        temperature = _or_default(row.get("temperature"), DEFAULT_TEMPERATURE)
        if float(max_tokens) != int(max_tokens) or not 0 <= int(max_tokens) <= MAX_TOKENS_LIMIT:
            raise ValueError(f"max_tokens must be a whole number from 0 to {MAX_TOKENS_LIMIT}, got {max_tokens}")
        if float(temperature) < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        return cls(prompt, int(max_tokens), float(temperature))


def _or_default(value: Any, default: float) -> Any:
    """Missing, None and NaN (a DataFrame's empty cell) all mean "use the default"."""
    if value is None or (isinstance(value, float) and value != value):
        return default
    return value


def _rows(model_input: Any) -> list[Mapping[str, Any]]:
    if hasattr(model_input, "to_dict"):  # pandas DataFrame
        return list(model_input.to_dict(orient="records"))
    if isinstance(model_input, Mapping):
        return [model_input]
    if isinstance(model_input, list) and all(isinstance(r, Mapping) for r in model_input):
        return model_input
    raise ValueError("model input must be a DataFrame, a dict or a list of dicts with a 'prompt' key")


class TinyGPTModel(mlflow.pyfunc.PythonModel):
    """Serves :class:`~gpt_observatory.flows.model.gpt.TinyGPT` weights logged as artifacts."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        artifacts = context.artifacts
        self.tokenizer = gpt.ByteTokenizer.from_json(Path(artifacts["tokenizer"]).read_text())
        config = gpt.GPTConfig.from_json(Path(artifacts["config"]).read_text())
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        threads = int((context.model_config or {}).get("torch_threads") or 0)
        if threads and self.device == "cpu":
            # Process-wide, chosen by the model's config (load_model(..., model_config=...) overrides):
            # a model this small runs fastest on one thread, see training.torch_threads.
            torch.set_num_threads(threads)
        model = gpt.TinyGPT(config)
        model.load_state_dict(torch.load(artifacts["weights"], map_location="cpu", weights_only=True))
        self.model = model.to(self.device).eval()

    # A DataFrame hint is the one MLflow neither turns into a schema nor warns about; schema
    # enforcement against SIGNATURE hands a DataFrame here (direct calls may pass a list of dicts).
    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        out = []
        for row in _rows(model_input):
            request = Request.parse(row)
            tokens = list(self._tokens(request))
            stopped = bool(tokens) and tokens[-1] == self.tokenizer.eot
            completion = tokens[:-1] if stopped else tokens
            out.append(
                {
                    "text": self.tokenizer.decode(completion),
                    "prompt_tokens": len(self.tokenizer.encode(request.prompt)),
                    "completion_tokens": len(completion),
                    "finish_reason": "stop" if stopped else "length",
                }
            )
        return out

    def predict_stream(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: dict[str, Any],
        params: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        rows = _rows(model_input)
        if len(rows) != 1:
            raise ValueError(f"predict_stream takes a single input, got {len(rows)}")
        request = Request.parse(rows[0])
        decoder = self.tokenizer.stream_decoder()
        completion, finish = 0, "length"
        for token in self._tokens(request):
            if token == self.tokenizer.eot:
                finish = "stop"
                break
            completion += 1
            yield {"text": decoder.decode(bytes([token]))}
        yield {
            "text": decoder.decode(b"", final=True),
            "finish_reason": finish,
            "prompt_tokens": len(self.tokenizer.encode(request.prompt)),
            "completion_tokens": completion,
        }

    def _tokens(self, request: Request) -> Iterator[int]:
        return gpt.generate(
            self.model, self.tokenizer.encode(request.prompt), request.max_tokens, request.temperature
        )


def pip_requirements() -> list[str]:
    """Pinned explicitly: MLflow's inference would load the model in a subprocess (seconds)."""
    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}", "pandas", "numpy"]


def log_model(model: gpt.TinyGPT, name: str = "model", **kwargs: Any) -> mlflow.models.model.ModelInfo:
    """Log ``model`` in the active MLflow run as a self-contained pyfunc.

    This module and :mod:`~gpt_observatory.flows.model.gpt` are pickled by value, so loading
    needs torch and MLflow but not the ``gpt_observatory`` package.
    """
    import cloudpickle

    modules = [gpt, sys.modules[__name__]]
    with tempfile.TemporaryDirectory(prefix="tiny-gpt-") as tmp:
        folder = Path(tmp)
        torch.save(model.state_dict(), folder / "weights.pt")
        (folder / "config.json").write_text(model.cfg.to_json())
        (folder / "tokenizer.json").write_text(gpt.ByteTokenizer().to_json())
        artifacts = {key: str(folder / f) for key, f in
                     (("weights", "weights.pt"), ("config", "config.json"), ("tokenizer", "tokenizer.json"))}
        for module in modules:
            cloudpickle.register_pickle_by_value(module)
        try:
            return mlflow.pyfunc.log_model(
                name=name,
                python_model=TinyGPTModel(),
                artifacts=artifacts,
                signature=SIGNATURE,
                input_example=INPUT_EXAMPLE,
                pip_requirements=pip_requirements(),
                model_config={"torch_threads": 1},
                **kwargs,
            )
        finally:
            for module in modules:
                cloudpickle.unregister_pickle_by_value(module)


def load_model(model: gpt.TinyGPT) -> TinyGPTModel:
    """A :class:`TinyGPTModel` around an in-memory network (for tests and evaluation)."""
    wrapper = TinyGPTModel()
    wrapper.tokenizer = gpt.ByteTokenizer()
    wrapper.device = str(next(model.parameters()).device)
    wrapper.model = model.eval()
    return wrapper
