"""MLflow models-from-code entry: a model with the reference pyfunc interface whose answers take a
known time, for the reliability tests. Self-contained (MLflow copies this file into the model).

It "generates" ``max_tokens`` ASCII letters, one byte (= one token of the byte-level tokenizer)
per step, sleeping ``delay_s`` (``model_config``) per token; the first letter is ``label``, so a
test can tell versions apart.
"""

import time

import mlflow.pyfunc
from mlflow.models import set_model

LETTERS = "abcdefghijklmnopqrstuvwxyz"


class SlowPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        config = context.model_config or {}
        self.label = str(config.get("label", "a"))
        self.delay_s = float(config.get("delay_s", 0.01))

    def _tokens(self, row):
        for i in range(int(row.get("max_tokens") or 32)):
            time.sleep(self.delay_s)
            yield self.label if i == 0 else LETTERS[i % len(LETTERS)]

    def predict(self, context, model_input, params=None):
        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        out = []
        for row in rows:
            text = "".join(self._tokens(row))
            out.append({"text": text, "prompt_tokens": len(str(row["prompt"]).encode()),
                        "completion_tokens": len(text), "finish_reason": "length"})
        return out

    def predict_stream(self, context, model_input, params=None):
        n = 0
        for piece in self._tokens(model_input):
            n += 1
            yield {"text": piece}
        yield {"text": "", "finish_reason": "length", "prompt_tokens": len(str(model_input["prompt"]).encode()),
               "completion_tokens": n}


set_model(SlowPyfunc())
