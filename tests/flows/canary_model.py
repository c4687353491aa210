"""MLflow models-from-code entry: a model with the reference pyfunc interface whose behaviour is set
per version by ``model_config``, so a "bad" version is genuinely slow or failing in the gateway.

- ``label``: the first piece of every answer (tells versions apart);
- ``delay_s``: sleep per request (before the first token);
- ``fail_share``: this share of requests raises (evenly spread, not random);
- ``fault_file``/``fault_delay_s``/``fault_fail_share``: the same, applied only while that file
  exists (a version that degrades after its promotion).

Self-contained (the gateway loads it without the ``tests`` package).
"""

import os
import threading
import time

import mlflow.pyfunc
import pandas as pd
from mlflow.models import set_model

LETTERS = "abcdefghijklmnopqrstuvwxyz"


class CanaryTestModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        config = context.model_config or {}
        self.label = str(config.get("label", "a"))
        self.delay_s = float(config.get("delay_s", 0.0))
        self.fail_share = float(config.get("fail_share", 0.0))
        self.fault_file = config.get("fault_file")
        self.fault_delay_s = float(config.get("fault_delay_s", 0.0))
        self.fault_fail_share = float(config.get("fault_fail_share", 0.0))
        self._lock = threading.Lock()
        self._calls = 0

    def _begin(self):
        """Sleep and maybe fail, as this version is configured to."""
        delay, share = self.delay_s, self.fail_share
        if self.fault_file and os.path.exists(self.fault_file):
            delay, share = delay + self.fault_delay_s, max(share, self.fault_fail_share)
        with self._lock:
            self._calls += 1
            n = self._calls
        if delay:
            time.sleep(delay)
        if share and int(n * share) != int((n - 1) * share):
            raise RuntimeError(f"deliberate failure of version {self.label}")

    def _pieces(self, row):
        return [self.label if i == 0 else LETTERS[i % 26] for i in range(int(row.get("max_tokens") or 8))]

    def predict(self, context, model_input: pd.DataFrame, params=None):
        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        out = []
        for row in rows:
            self._begin()
            text = "".join(self._pieces(row))
            out.append({"text": text, "prompt_tokens": len(str(row["prompt"]).encode()),
                        "completion_tokens": len(text.encode()), "finish_reason": "length"})
        return out

    def predict_stream(self, context, model_input, params=None):
        self._begin()
        pieces = self._pieces(model_input)
        for piece in pieces:
            yield {"text": piece}
        yield {"text": "", "finish_reason": "length", "prompt_tokens": len(str(model_input["prompt"]).encode()),
               "completion_tokens": len("".join(pieces).encode())}


set_model(CanaryTestModel())
