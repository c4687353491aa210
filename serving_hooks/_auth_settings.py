"""Settings of credential verification (:class:`AuthSettings`): explicit arguments (the CLI),
then ``OBSERVATORY_AUTH_*``, then the ``[auth]`` table of ``observatory.toml``, then defaults.
An invalid value raises :class:`telemetry.settings.ConfigError` naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from gpt_observatory.serving_hooks._jwks import check_secure_url
from gpt_observatory.telemetry.settings import TableSettings, split_commas

ALLOWED_ALGORITHMS = ("RS256", "ES256", "EdDSA")
ENV_PREFIX = "OBSERVATORY_AUTH_"
# With a known salt, anyone reading telemetry can test guesses ("is this alice@example.com?").
DEFAULT_SUBJECT_SALT = "observatory-development-salt"


class AuthSettings(TableSettings):
    """How credentials are verified: arguments, then ``OBSERVATORY_AUTH_<FIELD>``, then ``[auth]``
    of ``observatory.toml``, then defaults."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True)
    toml_table = "auth"

    issuer: str | None = Field(None, description="OIDC issuer URL; JWTs are refused when unset.")
    audience: str | None = Field(None, description="Required `aud` of JWTs (required with an issuer).")
    algorithms: Annotated[tuple[Literal["RS256", "ES256", "EdDSA"], ...], NoDecode, BeforeValidator(split_commas)] = Field(
        ALLOWED_ALGORITHMS, description="Accepted JWT algorithms, comma-separated; a subset of RS256, ES256, EdDSA."
    )
    leeway_s: float = Field(30.0, ge=0, le=300, description="Clock skew tolerated on exp/nbf/iat, seconds.")
    tenant_claim: str = Field("tenant", min_length=1, description="JWT claim naming the tenant (dotted path).")
    model_scopes: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description='Scopes required per model, JSON, e.g. {"tiny-gpt": ["inference"], "*": []}.'
    )
    api_keys_file: Path | None = Field(None, description="JSON file of hashed API keys; API keys refused when unset.")
    jwks_refresh_interval_s: float = Field(300.0, gt=0, description="Age after which cached JWKS are refreshed.")
    jwks_min_refresh_interval_s: float = Field(
        10.0, ge=0, description="At most one JWKS fetch per this many seconds on unknown key ids."
    )
    jwt_cache_size: int = Field(
        10_000, ge=0, description="Verified JWTs remembered (by hash) until they expire; 0 verifies every request."
    )
    max_token_length: int = Field(8192, ge=256, le=65536, description="Longer credentials are refused unparsed.")
    subject_salt: SecretStr = Field(
        SecretStr(DEFAULT_SUBJECT_SALT), description="HMAC key for subject hashes; set a secret one in production."
    )
    http_timeout_s: float = Field(5.0, gt=0, description="Timeout of discovery and JWKS requests, seconds.")
    throttle_by: Annotated[tuple[Literal["address", "key_id"], ...], NoDecode, BeforeValidator(split_commas)] = Field(
        ("address", "key_id"), description="What failed-auth throttling counts refusals by, comma-separated: "
        "address (the client's), key_id (an API key's id); empty turns throttling off.",
    )
    throttle_failures: int = Field(
        10, ge=1, description="Refused credentials in a row (each within the window of the last) before a key waits."
    )
    throttle_window_s: float = Field(60.0, gt=0, description="Seconds without a refusal that forgive a key.")
    throttle_max_backoff_s: float = Field(
        300.0, ge=1, description="Longest wait, seconds: 1 s at the last allowed refusal, doubling at each further one."
    )
    throttle_max_keys: int = Field(
        10_000, ge=1, description="Keys tracked per kind; the one refused least recently is forgotten first."
    )

    @field_validator("algorithms")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(f"give at least one of {', '.join(ALLOWED_ALGORITHMS)}")
        return value

    @field_validator("issuer")
    @classmethod
    def _secure_issuer(cls, value: str | None) -> str | None:
        if value is not None:
            check_secure_url(value, "issuer")
        return value

    @model_validator(mode="after")
    def _audience_with_issuer(self) -> AuthSettings:
        if self.issuer and not self.audience:
            raise ValueError(f"{ENV_PREFIX}AUDIENCE is required when {ENV_PREFIX}ISSUER is set")
        return self
