"""A tiny model with the reference pyfunc interface (``predict``/``predict_stream``), for gateway tests.

It "generates" a fixed cycle of ASCII letters, one byte (= one token of the byte-level tokenizer)
per step, optionally sleeping ``delay_s`` per token. ``label`` is echoed as the first letter so a
test can tell versions apart. ``echo_pyfunc.py`` logs it to MLflow as models-from-code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

LETTERS = "abcdefghijklmnopqrstuvwxyz"


class EchoModel:
    """The plain generator; :class:`EchoPyfunc` adapts it to MLflow's PythonModel."""

    def __init__(self, label: str = "a", delay_s: float = 0.0) -> None:
        self.label = label
        self.delay_s = delay_s

    def _tokens(self, row: dict[str, Any]) -> Iterator[str]:
        max_tokens = int(row.get("max_tokens") or 32)
        for i in range(max_tokens):
            if self.delay_s:
                time.sleep(self.delay_s)
            yield self.label if i == 0 else LETTERS[i % len(LETTERS)]

    def predict(self, model_input: Any) -> list[dict[str, Any]]:
        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        out = []
        for row in rows:
            text = "".join(self._tokens(row))
            out.append({
                "text": text, "prompt_tokens": len(str(row["prompt"]).encode()),
                "completion_tokens": len(text.encode()), "finish_reason": "length",
            })
        return out

    def predict_stream(self, model_input: dict[str, Any]) -> Iterator[dict[str, Any]]:
        n = 0
        for piece in self._tokens(model_input):
            n += 1
            yield {"text": piece}
        yield {
            "text": "", "finish_reason": "length",
            "prompt_tokens": len(str(model_input["prompt"]).encode()), "completion_tokens": n,
        }
