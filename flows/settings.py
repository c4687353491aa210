"""Settings of the flows, each group validated before a flow touches the registry; an invalid
value raises :class:`~gpt_observatory.telemetry.ConfigError` naming the key.

- :class:`PipelineSettings`: ``OBSERVATORY_PIPELINE_*`` environment variables, then the
  ``[pipeline]`` table of ``observatory.toml``, then defaults: what the flows train, where they
  register it, and the offline gates.
- :class:`CanarySettings`: ``OBSERVATORY_CANARY_*``, then ``[canary]``, then defaults: where
  Prometheus is, how long the canary and guard flows watch, and the live gates.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, field_serializer, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from gpt_observatory.flows.model.training import TrainParams
from gpt_observatory.telemetry.redact import without_credentials
from gpt_observatory.telemetry.settings import TableSettings

PIPELINE_ENV_PREFIX = "OBSERVATORY_PIPELINE_"
CANARY_ENV_PREFIX = "OBSERVATORY_CANARY_"
OFFLINE_GATE_KEYS = ("min_improvement", "max_latency_regression", "golden_tolerance", "max_loss",
                     "max_latency_p95_s", "min_golden_pass_rate", "max_golden_loss")
LIVE_GATE_KEYS = (
    "min_requests", "max_error_rate", "max_error_rate_increase", "max_p95_duration_s", "max_p95_duration_regression",
    "max_p95_ttft_s", "max_p95_ttft_regression", "min_tokens_per_s", "max_tokens_per_s_drop", "latency_tolerance_s",
)
_TRAIN = TrainParams()


class PipelineSettings(TableSettings):
    """What the flows train, where they register it, and the gates a challenger must pass."""

    model_config = SettingsConfigDict(
        env_prefix=PIPELINE_ENV_PREFIX, extra="forbid", validate_default=True, protected_namespaces=()
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

    # the human approval gate (flows/approval.py)
    approval: Literal["none", "required"] = Field(
        "none", description="After the gates pass: move the alias (none) or wait for a person to approve (required)."
    )
    approval_models: dict[str, Literal["none", "required"]] = Field(
        default_factory=dict, description='Per-model override of approval, e.g. "tiny-gpt:required,other:none" or JSON.'
    )
    approval_timeout_s: int = Field(
        86_400, ge=1, le=30 * 86_400, description="Seconds a promotion waits for approval; then it counts as rejected."
    )
    approval_poll_s: int = Field(10, ge=1, le=600, description="Seconds between looks at Prefect for an answer.")

    @field_validator("approval_models", mode="before")
    @classmethod
    def _model_pairs(cls, value: Any) -> Any:
        # --set and observatory.toml give a string: JSON, or "model:required,model:none"
        if not isinstance(value, str):
            return value
        if value.strip().startswith("{"):
            return json.loads(value)
        pairs = (p.rpartition(":") for p in value.split(",") if p.strip())
        return {name.strip(): mode.strip() for name, _, mode in pairs}

    def approval_for(self, model: str) -> Literal["none", "required"]:
        """The approval mode of ``model``: its override, else :attr:`approval`."""
        return self.approval_models.get(model, self.approval)

    @field_serializer("tracking_uri")
    def _recorded_without_credentials(self, uri: str | None) -> str | None:
        # Prefect records a flow's parameters (these settings travel as one): never the URI's password.
        return None if uri is None else without_credentials(uri)

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
        return {k: getattr(self, k) for k in OFFLINE_GATE_KEYS}


def load_settings(**overrides: Any) -> PipelineSettings:
    """Build and validate the settings; raise :class:`ConfigError` naming each bad key."""
    return PipelineSettings.load(**overrides)


class CanarySettings(TableSettings):
    """The live comparison of a challenger with the champion, and the guard after a promotion."""

    model_config = SettingsConfigDict(env_prefix=CANARY_ENV_PREFIX, extra="forbid", validate_default=True)
    toml_table = "canary"

    prometheus_url: str = Field("http://127.0.0.1:9090", description="Prometheus HTTP API base URL.")
    selector: str = Field(
        "", description='Extra PromQL label matchers for the gateways\' series, e.g. job="observatory-gateway".'
    )
    query_timeout_s: float = Field(10.0, gt=0, le=300)
    canary_source: Literal["live", "shadow"] = Field(
        "live", description="Figures the canary judges: 'live' (the share of users the challenger serves) or "
                            "'shadow' (mirrored requests no user sees; gateways with shadow_share)."
    )

    # the analysis window
    window_s: float = Field(300.0, gt=0, le=86_400, description="Length of one analysis window.")
    step_s: float = Field(15.0, gt=0, le=3_600, description="Seconds between looks at Prometheus in a window.")
    fail_fast: bool = Field(True, description="Reject as soon as a gate fails on enough traffic, before the window ends.")
    on_inconclusive: Literal["extend", "stop"] = Field(
        "extend", description="Too little traffic at the end of a window: extend it (up to max_extensions) or stop."
    )
    max_extensions: int = Field(1, ge=0, le=100, description="Windows added while the result is inconclusive.")

    # gates: sample size, then absolute bounds (challenger alone) and relative ones (against the champion)
    min_requests: int = Field(50, ge=1, description="Requests each side needs in the window before any decision.")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="Absolute bound on the challenger's error rate.")
    max_error_rate_increase: float = Field(
        0.01, ge=0, le=1, description="Allowed error-rate increase over the champion's (absolute points)."
    )
    max_p95_duration_s: float = Field(30.0, gt=0, description="Absolute bound on p95 request duration.")
    max_p95_duration_regression: float = Field(
        0.25, ge=0, description="Allowed relative p95 request-duration increase over the champion's (0.25 = +25%)."
    )
    max_p95_ttft_s: float = Field(5.0, gt=0, description="Absolute bound on p95 time to first token (streams).")
    max_p95_ttft_regression: float = Field(0.25, ge=0, description="Allowed relative p95 TTFT increase.")
    min_tokens_per_s: float = Field(0.0, ge=0, description="Absolute floor on output tokens per second of generation.")
    max_tokens_per_s_drop: float = Field(
        0.25, ge=0, le=1, description="Allowed relative drop of output tokens per second of generation."
    )
    latency_tolerance_s: float = Field(
        0.01, ge=0, description="Latency regressions smaller than this are ignored (histogram bucket resolution)."
    )

    # the guard after a promotion
    guard_duration_s: float = Field(
        300.0, ge=0, le=7 * 86_400, description="How long the guard watches a new champion (0: no guard)."
    )
    guard_window_s: float = Field(60.0, gt=0, le=86_400, description="Trailing window the guard judges at each step.")
    guard_min_requests: int = Field(20, ge=1, description="Requests in the guard window before a breach counts.")

    @model_validator(mode="after")
    def _consistent(self) -> CanarySettings:
        if self.step_s > self.window_s:
            raise ValueError(f"step_s ({self.step_s}) must not exceed window_s ({self.window_s})")
        return self

    def gates(self) -> dict[str, float]:
        """The gate figures, as recorded with every decision."""
        return {k: float(getattr(self, k)) for k in LIVE_GATE_KEYS}


def load_canary_settings(**overrides: Any) -> CanarySettings:
    """Build and validate the settings; raise :class:`ConfigError` naming each bad key."""
    return CanarySettings.load(**overrides)
