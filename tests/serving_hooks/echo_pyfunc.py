"""MLflow models-from-code entry for :class:`tests.serving_hooks.echo_model.EchoModel`.

``model_config`` may set ``label`` (first letter of every answer) and ``delay_s`` (per token).
"""

import mlflow.pyfunc
import pandas as pd
from mlflow.models import set_model

from tests.serving_hooks.echo_model import EchoModel


class EchoPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        config = context.model_config or {}
        self.model = EchoModel(str(config.get("label", "a")), float(config.get("delay_s", 0.0)))

    # A DataFrame hint is the one MLflow neither turns into a schema nor warns about (see flows.pyfunc).
    def predict(self, context, model_input: pd.DataFrame, params=None):
        return self.model.predict(model_input)

    def predict_stream(self, context, model_input, params=None):
        yield from self.model.predict_stream(model_input)


set_model(EchoPyfunc())
