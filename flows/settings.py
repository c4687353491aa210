"""Pipeline settings: ``OBSERVATORY_PIPELINE_*`` environment variables, then the ``[pipeline]``
table of ``observatory.toml``, then defaults. Loaded (and so validated) before a flow touches
the registry; an invalid value raises :class:`~telemetry.ConfigError` naming the key."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from gpt_observatory.flows.training import TrainParams
from gpt_observatory.telemetry.settings import TableSettings

ENV_PREFIX = "OBSERVATORY_PIPELINE_"
_TRAIN = TrainParams()


class PipelineSettings(TableSettings):
    """What the flows train, where they register it, and the gates a challenger must pass."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, protected_namespaces=()
    )
    toml_table = "pipeline"

    model_name: str = Field("tiny-gpt", min_length=1, description="Registered model name.")
    experiment: str = Field("tiny-gpt", min_length=1, description="MLflow experiment for training and evaluation runs.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; else MLFLOW_TRACKING_URI, else SQLite under the state folder."
    )

    # training: TrainParams' fields; together with the data and code they fingerprint a version
    steps: int = Field(_TRAIN.steps, ge=1, le=1_000_000)
    batch_size: int = Field(_TRAIN.batch_size, ge=1, le=4096)
    learning_rate: float = Field(_TRAIN.learning_rate, gt=0, le=1)
    seed: int = Field(_TRAIN.seed, ge=0)
    context: int = Field(_TRAIN.context, ge=8, le=4096)
    n_layer: int = Field(_TRAIN.n_layer, ge=1, le=64)
    n_head: int = Field(_TRAIN.n_head, ge=1, le=64)
    d_model: int = Field(_TRAIN.d_model, ge=8, le=8192)
    heldout_fraction: float = Field(_TRAIN.heldout_fraction, gt=0, lt=0.5)
    torch_threads: int = Field(1, ge=0, le=1024, description="CPU threads for training and evaluation (0: torch's default).")

    # evaluation
    eval_latency_samples: int = Field(20, ge=2, le=10_000, description="pyfunc calls timed for p50/p95.")
    eval_max_tokens: int = Field(16, ge=1, le=1024, description="Tokens generated per timed call.")

    # gates
    min_improvement: float = Field(
        0.01, ge=0, lt=1, description="Relative held-out loss improvement a challenger needs over the champion."
    )
    max_latency_regression: float = Field(
        0.5, ge=0, description="Allowed relative p95 latency increase over the champion (0.5 = +50%)."
    )
    golden_tolerance: float = Field(
        0.25, ge=0, description="Allowed increase (nats/byte) of any golden prompt's loss over the champion's."
    )
    max_loss: float = Field(3.5, gt=0, description="Absolute held-out loss bound (every version, the first included).")
    max_latency_p95_s: float = Field(2.0, gt=0, description="Absolute p95 latency bound in seconds.")
    min_golden_pass_rate: float = Field(0.5, ge=0, le=1, description="Share of golden prompts under max_golden_loss.")
    max_golden_loss: float = Field(3.5, gt=0, description="Loss (nats/byte) under which a golden prompt passes.")

    # operations
    retries: int = Field(3, ge=0, le=20, description="Task retries on transient MLflow errors.")
    retry_delay_s: float = Field(2.0, ge=0, le=600)
    lock_timeout_s: float = Field(120.0, gt=0, description="Wait for the promotion lock at most this long.")
    lease_ttl_s: float = Field(300.0, ge=60, le=86_400, description="Registry lease lifetime (crash safety).")
    lease_settle_s: float = Field(0.5, ge=0, le=60, description="Pause before a registry lease is trusted.")
    progress: bool = Field(True, description="Show a training progress bar.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> PipelineSettings:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})")
        return self

    def train_params(self) -> TrainParams:
        return TrainParams(
            steps=self.steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            seed=self.seed,
            context=self.context,
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
            heldout_fraction=self.heldout_fraction,
        )

    def gates(self) -> dict[str, float]:
        """The gate figures, as recorded with every decision."""
        keys = ("min_improvement", "max_latency_regression", "golden_tolerance", "max_loss",
                "max_latency_p95_s", "min_golden_pass_rate", "max_golden_loss")
        return {k: getattr(self, k) for k in keys}


def load_settings(**overrides: Any) -> PipelineSettings:
    """Build and validate the settings; raise :class:`ConfigError` naming each bad key."""
    return PipelineSettings.load(**overrides)
