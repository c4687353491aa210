"""Serving settings: explicit arguments (the CLI), then ``OBSERVATORY_SERVE_*``, then the
``[serve]`` table of ``observatory.toml``, then defaults. An invalid value raises
:class:`telemetry.settings.ConfigError` naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from gpt_observatory.generation import MAX_TOKENS_LIMIT
from gpt_observatory.telemetry.settings import CommaList, TableSettings

Backend = Literal["mlflow", "upstream"]
RateLimitStrategy = Literal["fixed-window", "moving-window", "sliding-window-counter"]
CanarySticky = Literal["none", "tenant", "session"]
RateLimitStore = Literal["auto", "host", "memory"]


class ServeSettings(TableSettings):
    """Everything ``observatory serve`` and :func:`serving_hooks.app.create_app` read.

    Field ``x`` is ``OBSERVATORY_SERVE_X`` in the environment, ``x`` in ``[serve]`` of
    ``observatory.toml`` and ``--x`` (dashes for underscores) of ``observatory serve``, which builds
    its options from these fields and their descriptions.
    """

    model_config = SettingsConfigDict(env_prefix="OBSERVATORY_SERVE_", extra="forbid", validate_default=True)
    toml_table = "serve"

    # Model backend.
    backend: Backend = Field(
        "mlflow", description="Model backend: 'mlflow' (serve models:/MODEL@ALIAS in process) or 'upstream' "
                              "(proxy an OpenAI-compatible server)."
    )
    model: str = Field(
        "tiny-gpt", description="Registered MLflow model to serve (mlflow backend); the default model id (upstream)."
    )
    alias: str = Field("champion", description="Registry alias to serve and follow (hot-swap).")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking/registry URI; unset: MLFLOW_TRACKING_URI or MLflow's default."
    )
    poll_interval_s: float = Field(10.0, gt=0, description="Seconds between checks of the alias for a new version.")
    # Named apart from the gateway processes a fleet runs (DESIGN: `--workers N`).
    generation_threads: int = Field(8, ge=1, le=256, description="Threads running in-process generation (mlflow backend).")
    gpu_energy_interval_s: float = Field(
        0.05, ge=0, le=10, description="Seconds between reads of a GPU's energy counter while in-process generations "
                                       "run on it, to split its joules and GPU-seconds between them (0: off)."
    )
    upstream_url: str | None = Field(
        None, description="OpenAI base URL of the upstream server, e.g. http://127.0.0.1:8001/v1 (upstream backend)."
    )
    upstream_api_key: SecretStr | None = Field(
        None, description="Key sent to the upstream; never the caller's credential, never exported."
    )
    upstream_provider: str = Field("openai", description="gen_ai.provider.name of the upstream.")
    upstream_connect_timeout_s: float = Field(5.0, gt=0, description="Seconds to connect to the upstream.")
    upstream_timeout_s: float = Field(
        60.0, gt=0, description="Seconds to wait for the upstream's answer or its next streamed bytes before a 504."
    )
    upstream_max_connections: int = Field(256, ge=1, description="Size of the upstream connection pool.")
    upstream_models: CommaList = Field(
        [], description="Model ids callers may name (upstream backend); unset: only 'model'. Anything else is a 404 "
                        "and never becomes a metric label."
    )
    forward_baggage_keys: CommaList = Field(
        [], description="Caller 'baggage' keys forwarded to the upstream (default none: only traceparent goes)."
    )
    forward_tracestate_keys: CommaList = Field(
        [], description="Caller 'tracestate' vendor keys forwarded to the upstream (default none)."
    )

    # Model catalog (serving_hooks.catalog): several models, each mlflow or an upstream pool. Unset: the
    # settings above describe one model (a one-entry catalog).
    catalog_file: Path | None = Field(
        None, description="TOML file of the models served ([[models]] tables, see README 'Model catalog'); "
                          "reloaded on SIGHUP and when it changes. Unset: backend/model/upstream_url name one model."
    )
    catalog_poll_s: float = Field(
        2.0, gt=0, description="Seconds between checks of the catalog file's modification time (reload on change)."
    )

    # Canary routing (mlflow backend; serving_hooks.backends.canary). The challenger gets traffic only
    # while its alias exists: deleting the alias (what the canary flow does on a decision) is share 0.
    canary_share: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of requests (0..1) served by the challenger alias while it exists "
                                         "(mlflow backend); deleting the alias sets it back to 0 at the next poll."
    )
    canary_tenants: CommaList = Field([], description="Tenants always served by the challenger while it exists.")
    canary_sticky: CanarySticky = Field(
        "none", description="Keep callers on one side of the canary: 'none' (draw per request), 'tenant', or "
                            "'session' (the OpenAI 'user' field)."
    )
    challenger_alias: str = Field("challenger", description="Registry alias of the canary's challenger.")

    # Shadow traffic (mlflow backend; serving_hooks.backends.shadow): copies of live requests go to the
    # challenger after the champion's answer is sent; users only ever see the champion.
    shadow_share: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of requests (0..1) mirrored to the challenger alias while it exists, "
                                         "after the champion answered (mlflow backend); never seen by the caller."
    )
    shadow_tenants: CommaList = Field([], description="Tenants whose every request is mirrored to the challenger.")
    shadow_queue_size: int = Field(
        256, ge=1, le=1_000_000, description="Mirrors waiting for the challenger at most; past it a mirror is dropped "
                                             "(counted), never the user request."
    )

    # Listener.
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    graceful_timeout_s: float = Field(30.0, ge=0, description="Seconds requests in flight may take to finish on shutdown.")
    # Worker processes (serving_hooks.workers): every core on one port.
    workers: int = Field(
        1, ge=1, le=256, description="Gateway worker processes sharing the API (and admin) port, started and "
                                     "drained by a supervisor; 1: the gateway runs in this process."
    )

    # Admin listener and production guards (serving_hooks.production).
    admin_port: int | None = Field(
        None, ge=0, le=65535, description="Port of the admin listener serving /metrics, /docs and /openapi.json "
                                          "(on host); unset: they stay on the API port (development only)."
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token the admin endpoints require (on the admin listener or, without one, the API port)."
    )
    production_allow: CommaList = Field(
        [], description="Unsafe defaults allowed with environment=production: any of dev_idp, default_salt, "
                        "anonymous, public_admin."
    )

    # Authentication (serving_hooks.auth.Authenticator; its other settings are OBSERVATORY_AUTH_*).
    oidc_issuer: str | None = Field(
        None, description="OIDC issuer URL whose JWKS verify bearer JWTs (discovery at "
                          "/.well-known/openid-configuration)."
    )
    audience: str | None = Field(None, description="Required 'aud' of JWTs (with the OIDC issuer).")
    api_keys_file: Path | None = Field(
        None, description="JSON file of hashed API keys (made by 'observatory keys create')."
    )
    allow_anonymous: bool = Field(
        False, description="Serve without authentication when none is configured (development only)."
    )

    # Gateway limits.
    redis_url: str | None = Field(
        None, description="Redis URL holding rate-limit state shared by gateway replicas, e.g. "
                          "redis://127.0.0.1:6379/0; unset: in memory (per process)."
    )
    rate_limit_by: Literal["tenant", "subject"] = Field(
        "tenant", description="Key rate limits by 'tenant' or by 'subject' (one API key or JWT subject)."
    )
    requests_per_minute: int | None = Field(
        None, ge=1, description="Requests per minute allowed per tenant (or subject); unset: unlimited."
    )
    tokens_per_minute: int | None = Field(
        None, ge=1, description="Tokens (input + output) per minute allowed per tenant (or subject); unset: unlimited."
    )
    rate_limit_strategy: RateLimitStrategy = Field("fixed-window", description="Rate-limit window ('limits' strategy).")
    rate_limit_namespace: str = Field("observatory", description="Key prefix of rate-limit state in shared storage.")
    redis_timeout_s: float = Field(
        0.05, gt=0, le=10, description="Connect and socket timeout of the rate-limit store; past it a request is "
                                       "admitted unchecked (fail open, counted)."
    )
    rate_limit_store: RateLimitStore = Field(
        "auto", description="Where rate-limit state lives without redis_url: 'host' (one store served by the "
                            "worker supervisor over a unix socket, exact across workers), 'memory' (per worker "
                            "process, not exact with workers > 1) or 'auto' (host with workers > 1, else memory)."
    )
    # Tenants, prices and budgets (issue 17: serving_hooks.tenants, prices, budgets).
    tenants_file: Path | None = Field(
        None, description="TOML file of tenants and tiers (per-tenant RPM/TPM, allowed models, budget, labels; README "
                          "'Tenants, prices and budgets'), re-read when it changes. Unset: every tenant alike, no budgets."
    )
    tenants_poll_s: float = Field(
        2.0, gt=0, description="Seconds between checks of the tenants and prices files for a change (reload)."
    )
    default_tier: str = Field(
        "default", description="Tier ([tiers.NAME] of the tenants file) of tenants not in the table."
    )
    refuse_unknown_tenants: bool = Field(
        False, description="Refuse (403) tenants not in the tenants file instead of giving them default_tier."
    )
    prices_file: Path | None = Field(
        None, description="TOML file of [[prices]] per catalog model (per 1M input/output tokens, per GPU-second, "
                          "from an effective time), re-read when it changes. Unset: every model is free."
    )
    budget_currency: str = Field(
        "USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 currency of prices and budgets (every price names it)."
    )
    budget_fail_mode: Literal["open", "closed"] = Field(
        "open", description="When the budget store fails or times out: 'open' admits the request unchecked (counted, "
                            "alerted), 'closed' refuses it (503)."
    )
    max_n: int = Field(8, ge=1, le=128, description="Largest 'n' (completions per request) accepted; above: 400.")
    max_best_of: int = Field(8, ge=1, le=128, description="Largest 'best_of' accepted; above: 400.")
    max_tokens_limit: int = Field(
        MAX_TOKENS_LIMIT, ge=1, le=1 << 20, description="Largest max_tokens / max_completion_tokens accepted; above: 400."
    )
    context_tokens: int | None = Field(
        None, ge=1, description="The model's context in tokens: prompt estimate + n x max_tokens above it is a 400; "
                                "unset: not checked."
    )
    max_request_bytes: int = Field(1 << 20, ge=1, description="Largest request body accepted; larger ones get 413.")
    capture_content: bool | None = Field(
        None, description="Record prompt and completion text on GenAI spans; unset: the telemetry setting (off)."
    )

    # Usage ledger (issue 17, serving_hooks/ledger).
    ledger_enabled: bool = Field(
        True, description="Write one usage row per completion request to the ledger (spooled locally, shipped "
                           "in batches to ledger_url)."
    )
    ledger_url: str | None = Field(
        None, description="The ledger store: a SQLite file path, or a postgresql:// URL (table 'usage', "
                          "partitioned by month); unset: <state dir>/ledger.sqlite3."
    )
    ledger_spool_dir: Path | None = Field(
        None, description="Folder of the durable local spool (append-only segment files) rows wait in until "
                          "the store has them; rows left by a killed gateway ship on the next start. Unset: "
                          "<state dir>/ledger-spool."
    )
    ledger_batch_rows: int = Field(1000, ge=1, le=100_000, description="Most rows per shipped batch.")
    ledger_ship_interval_s: float = Field(0.2, gt=0, le=60, description="Seconds between shipping passes "
                                                                          "(a failing store backs off to 5 s).")
    ledger_fsync_interval_s: float = Field(
        1.0, gt=0, le=60, description="Seconds between the spool's batched fsyncs with ledger_spool_sync 'normal' "
                                      "(the most a power loss can take; a killed gateway loses nothing)."
    )
    ledger_spool_max_mb: float | None = Field(
        None, gt=0, description="Largest size of the spool folder; past it rows are dropped and counted as on a "
                                "full disk. Unset: the disk's size."
    )
    ledger_spool_sync: Literal["normal", "full"] = Field(
        "normal", description="Spool durability: 'normal' (a row is written before the response's last bytes: "
                              "survives the gateway being killed; fsynced every ledger_fsync_interval_s) or "
                              "'full' (the last bytes also wait for a batched fsync: survives power loss)."
    )
    ledger_commit_wait_s: float = Field(
        1.0, ge=0, le=30, description="With ledger_spool_sync 'full': longest a response's last bytes wait for "
                                      "their row's fsync; 0: do not wait."
    )

    @model_validator(mode="after")
    def _backend_needs(self) -> ServeSettings:
        if self.backend == "upstream" and not self.upstream_url:
            raise ValueError("backend 'upstream' needs upstream_url (--upstream-url / OBSERVATORY_SERVE_UPSTREAM_URL)")
        if self.backend == "upstream" and self.canary:
            raise ValueError("canary routing (canary_share / canary_tenants) needs the 'mlflow' backend")
        if self.backend == "upstream" and self.shadow:
            raise ValueError("shadow traffic (shadow_share / shadow_tenants) needs the 'mlflow' backend")
        if self.canary and self.shadow:
            raise ValueError("canary routing and shadow traffic judge the same challenger: set canary_* or shadow_*")
        if (self.canary or self.shadow) and self.challenger_alias == self.alias:
            raise ValueError(f"challenger_alias must differ from alias ({self.alias!r})")
        return self

    @model_validator(mode="after")
    def _store_needs(self) -> ServeSettings:
        if self.redis_url and self.rate_limit_store != "auto":
            raise ValueError(f"rate_limit_store {self.rate_limit_store!r} conflicts with redis_url (Redis holds the "
                             "state): unset one of OBSERVATORY_SERVE_RATE_LIMIT_STORE, OBSERVATORY_SERVE_REDIS_URL")
        return self

    @property
    def limiter_store(self) -> Literal["redis", "host", "memory"]:
        """Where rate-limit state lives: Redis when configured, else the host store or this process's memory."""
        if self.redis_url:
            return "redis"
        if self.rate_limit_store == "auto":
            return "host" if self.workers > 1 else "memory"
        return self.rate_limit_store

    @property
    def shadow(self) -> bool:
        """Whether requests are mirrored to a challenger at all (a share above 0 or named tenants)."""
        return self.shadow_share > 0 or bool(self.shadow_tenants)

    @property
    def canary(self) -> bool:
        """Whether a challenger is routed to at all (a share above 0 or named tenants)."""
        return self.canary_share > 0 or bool(self.canary_tenants)


def load(**overrides: Any) -> ServeSettings:
    """Build :class:`ServeSettings` (``None`` overrides are ignored); raise :class:`ConfigError` naming the key."""
    return ServeSettings.load(**overrides)
