"""Canary settings: where Prometheus is, how long to watch, and the live gates.

``OBSERVATORY_CANARY_*`` environment variables, then the ``[canary]`` table of
``observatory.toml``, then defaults. Loaded (and so validated) before the canary or guard flow
touches the registry; an invalid value raises :class:`~telemetry.ConfigError` naming the key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from gpt_observatory.telemetry.settings import TableSettings

ENV_PREFIX = "OBSERVATORY_CANARY_"
GATE_KEYS = (
    "min_requests", "max_error_rate", "max_error_rate_increase", "max_p95_duration_s", "max_p95_duration_regression",
    "max_p95_ttft_s", "max_p95_ttft_regression", "min_tokens_per_s", "max_tokens_per_s_drop", "latency_tolerance_s",
)


class CanarySettings(TableSettings):
    """The live comparison of a challenger with the champion, and the guard after a promotion."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)
    toml_table = "canary"

    prometheus_url: str = Field("http://127.0.0.1:9090", description="Prometheus HTTP API base URL.")
    selector: str = Field(
        "", description='Extra PromQL label matchers for the gateways\' series, e.g. job="observatory-gateway".'
    )
    query_timeout_s: float = Field(10.0, gt=0, le=300)

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
        return {k: float(getattr(self, k)) for k in GATE_KEYS}


def load_canary_settings(**overrides: Any) -> CanarySettings:
    """Build and validate the settings; raise :class:`ConfigError` naming each bad key."""
    return CanarySettings.load(**overrides)
