"""Serving settings: explicit arguments (the CLI), then ``OBSERVATORY_SERVE_*``, then the
``[serve]`` table of ``observatory.toml``, then defaults. An invalid value raises
:class:`telemetry.settings.ConfigError` naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from gpt_observatory.telemetry.settings import CommaList, TableSettings

Backend = Literal["mlflow", "upstream"]
RateLimitStrategy = Literal["fixed-window", "moving-window", "sliding-window-counter"]
CanarySticky = Literal["none", "tenant", "session"]


class ServeSettings(TableSettings):
    """Everything ``observatory serve`` and :func:`serving_hooks.app.create_app` read.

    Field ``x`` is ``OBSERVATORY_SERVE_X`` in the environment and ``x`` in ``[serve]`` of
    ``observatory.toml``.
    """

    model_config = SettingsConfigDict(env_prefix="OBSERVATORY_SERVE_", extra="forbid", validate_default=True)
    toml_table = "serve"

    # Model backend.
    backend: Backend = "mlflow"
    model: str = "tiny-gpt"  # registered model name (mlflow) or the default model id (upstream)
    alias: str = "champion"
    tracking_uri: str | None = None  # MLflow; None: MLFLOW_TRACKING_URI or MLflow's default
    poll_interval_s: float = Field(10.0, gt=0)
    workers: int = Field(8, ge=1, le=256)  # threads running in-process generation
    upstream_url: str | None = None
    upstream_api_key: SecretStr | None = None  # sent upstream; never the caller's credential
    upstream_provider: str = "openai"  # gen_ai.provider.name of the upstream
    upstream_connect_timeout_s: float = Field(5.0, gt=0)
    upstream_timeout_s: float = Field(60.0, gt=0)  # max wait for headers / between streamed bytes
    upstream_max_connections: int = Field(256, ge=1)

    # Canary routing (mlflow backend; serving_hooks.backends.canary). The challenger gets traffic only
    # while its alias exists: deleting the alias (what the canary flow does on a decision) is share 0.
    canary_share: float = Field(0.0, ge=0.0, le=1.0)  # share of requests for the challenger alias
    canary_tenants: CommaList = []  # tenants always served by the challenger
    canary_sticky: CanarySticky = "none"  # per request, or hash of the tenant / the OpenAI `user` field
    challenger_alias: str = "challenger"

    # Listener.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    graceful_timeout_s: float = Field(30.0, ge=0)

    # Authentication (serving_hooks.auth.Authenticator; its other settings are OBSERVATORY_AUTH_*).
    oidc_issuer: str | None = None
    audience: str | None = None
    api_keys_file: Path | None = None
    allow_anonymous: bool = False  # serve without any credential check (development only)

    # Gateway limits.
    redis_url: str | None = None  # shared rate-limit state for replicas; None: in memory
    rate_limit_by: Literal["tenant", "subject"] = "tenant"
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    rate_limit_strategy: RateLimitStrategy = "fixed-window"
    rate_limit_namespace: str = "observatory"  # key prefix in the shared storage
    max_request_bytes: int = Field(1 << 20, ge=1)
    capture_content: bool | None = None  # None: the telemetry setting decides

    @model_validator(mode="after")
    def _backend_needs(self) -> ServeSettings:
        if self.backend == "upstream" and not self.upstream_url:
            raise ValueError("backend 'upstream' needs upstream_url (--upstream-url / OBSERVATORY_SERVE_UPSTREAM_URL)")
        if self.backend == "upstream" and self.canary:
            raise ValueError("canary routing (canary_share / canary_tenants) needs the 'mlflow' backend")
        if self.canary and self.challenger_alias == self.alias:
            raise ValueError(f"challenger_alias must differ from alias ({self.alias!r})")
        return self

    @property
    def canary(self) -> bool:
        """Whether a challenger is routed to at all (a share above 0 or named tenants)."""
        return self.canary_share > 0 or bool(self.canary_tenants)


def load(**overrides: Any) -> ServeSettings:
    """Build :class:`ServeSettings` (``None`` overrides are ignored); raise :class:`ConfigError` naming the key."""
    return ServeSettings.load(**overrides)
