"""Telemetry settings: explicit arguments, then ``OTEL_*``, then ``OBSERVATORY_*``, then
``observatory.toml`` (table ``[telemetry]``), then defaults. An invalid value raises
:class:`ConfigError` naming the key and where it may be set."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

Sampler = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]

# Standard OpenTelemetry variables and the setting each one feeds.
OTEL_ENV: dict[str, str] = {
    "OTEL_SERVICE_NAME": "service_name",
    "OTEL_RESOURCE_ATTRIBUTES": "resource_attributes",
    "OTEL_TRACES_EXPORTER": "traces_exporter",
    "OTEL_METRICS_EXPORTER": "metrics_exporter",
    "OTEL_LOGS_EXPORTER": "logs_exporter",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "otlp_endpoint",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "otlp_traces_endpoint",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "otlp_metrics_endpoint",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "otlp_logs_endpoint",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "otlp_protocol",
    "OTEL_EXPORTER_OTLP_HEADERS": "otlp_headers",
    "OTEL_EXPORTER_OTLP_TIMEOUT": "otlp_timeout_ms",
    "OTEL_EXPORTER_OTLP_INSECURE": "otlp_insecure",
    "OTEL_TRACES_SAMPLER": "sampler",
    "OTEL_TRACES_SAMPLER_ARG": "sampler_arg",
    "OTEL_METRIC_EXPORT_INTERVAL": "metric_export_interval_ms",
    "OTEL_BSP_MAX_QUEUE_SIZE": "max_queue_size",
    "OTEL_BSP_SCHEDULE_DELAY": "schedule_delay_ms",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "max_export_batch_size",
    "OTEL_EXPORTER_PROMETHEUS_HOST": "prometheus_host",
    "OTEL_EXPORTER_PROMETHEUS_PORT": "prometheus_port",
}
_EXPORTER_FIELDS = ("traces_exporter", "metrics_exporter", "logs_exporter")


def split_commas(value: Any) -> Any:
    """``"a, b,,c"`` → ``["a", "b", "c"]``: how every list setting reads from a variable; other values pass."""
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_commas)]
"""A list setting written ``a,b,c`` in a variable (pydantic-settings' JSON decoding switched off)."""


class ConfigError(ValueError):
    """A setting is invalid; the message names the key and how to fix it."""


class Settings(BaseSettings):
    """Every telemetry setting. Field ``x`` is ``OBSERVATORY_X`` in the environment and ``x`` in
    ``[telemetry]`` of ``observatory.toml``; the standard ``OTEL_*`` variables in :data:`OTEL_ENV`
    take precedence over both."""

    model_config = SettingsConfigDict(env_prefix="OBSERVATORY_", extra="forbid", validate_default=True)

    service_name: str = "observatory"
    service_version: str = ""
    environment: str = "development"
    resource_attributes: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    state_dir: Path = Path(".observatory")

    # Backends per signal. Empty = not named anywhere (the embedded default applies).
    traces_exporter: CommaList = Field(default_factory=list)
    metrics_exporter: CommaList = Field(default_factory=list)
    logs_exporter: CommaList = Field(default_factory=list)

    otlp_endpoint: str | None = None
    otlp_traces_endpoint: str | None = None
    otlp_metrics_endpoint: str | None = None
    otlp_logs_endpoint: str | None = None
    otlp_protocol: Literal["grpc", "http/protobuf"] = "grpc"
    otlp_headers: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    otlp_timeout_ms: int = Field(10_000, gt=0)
    otlp_insecure: bool = True

    sampler: Sampler = "parentbased_always_on"
    sampler_arg: float = Field(1.0, ge=0.0, le=1.0)
    metric_export_interval_ms: int = Field(10_000, gt=0)
    max_queue_size: int = Field(8192, gt=0)
    schedule_delay_ms: int = Field(1000, ge=0)
    max_export_batch_size: int = Field(512, gt=0)
    # Distinct attribute sets kept per metric (the SDK's cardinality limit, default 2,000, and ours for
    # summed counters); beyond it, measurements fold into one overflow series and are counted.
    metric_series_limit: int = Field(20_000, gt=0)
    shutdown_timeout_s: float = Field(10.0, gt=0)  # shutdown() flushes every provider within this

    prometheus_host: str = "127.0.0.1"
    prometheus_port: int = Field(9464, ge=0, le=65535)
    prometheus_serve: bool = True  # False: only register series (an app serves /metrics itself)
    pushgateway_url: str = "http://127.0.0.1:9091"
    pushgateway_job: str | None = None
    mlflow_tracking_uri: str | None = None
    mlflow_experiment_id: str | None = None
    mlflow_experiment_name: str = "observatory-traces"

    jsonl_max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    jsonl_backups: int = Field(3, ge=0)

    console_logs: bool | None = None  # None: on when logs use the embedded default
    console_format: Literal["human", "json"] = "human"
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    capture_content: bool = False
    redact_extra_keys: CommaList = Field(default_factory=list)

    gpu_enabled: bool = True
    gpu_interval_s: float = Field(1.0, gt=0)
    gpu_slow_interval_s: float = Field(10.0, gt=0)
    gpu_dcgm_names: bool = False
    # NVLink, PCIe and InfiniBand counters, on their own schedule beside the GPU collector (0: off).
    interconnect_interval_s: float = Field(10.0, ge=0)
    interconnect_infiniband_root: Path = Path("/sys/class/infiniband")

    @field_validator("resource_attributes", "otlp_headers", mode="before")
    @classmethod
    def _split_pairs(cls, v: Any) -> Any:
        if isinstance(v, str):
            pairs = {}
            for item in split_commas(v):
                key, sep, value = item.partition("=")
                if not sep or not key.strip():
                    raise ValueError(f"expected key=value pairs separated by commas, got {item!r}")
                pairs[key.strip()] = value.strip()
            return pairs
        return v

    @field_validator("otlp_protocol", mode="before")
    @classmethod
    def _protocol(cls, v: Any) -> Any:
        return "http/protobuf" if v in ("http", "http/json") else v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            _OtelEnvSource(settings_cls),
            env_settings,
            _TomlSource(settings_cls, "telemetry"),
        )

    def exporters(self, signal: Literal["traces", "metrics", "logs"]) -> list[str]:
        """Backend names for ``signal``: as set, else ``otlp`` when an OTLP endpoint is set, else ``jsonl``."""
        named = getattr(self, f"{signal}_exporter")
        if named:
            return [] if named == ["none"] else [n for n in named if n != "none"]
        if self.otlp_endpoint or getattr(self, f"otlp_{signal}_endpoint"):
            return ["otlp"]
        return ["jsonl"]


class _OtelEnvSource(PydanticBaseSettingsSource):
    """Reads the standard ``OTEL_*`` variables (see :data:`OTEL_ENV`)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for var, field in OTEL_ENV.items():
            raw = os.environ.get(var)
            if raw is None or raw == "":
                continue
            if field == "resource_attributes":
                attrs = Settings._split_pairs(raw)
                if "service.name" in attrs and "OTEL_SERVICE_NAME" not in os.environ:
                    values["service_name"] = attrs["service.name"]
                raw = attrs
            values[field] = raw
        return values


def config_file() -> Path:
    """``OBSERVATORY_CONFIG`` if set, else ``./observatory.toml``."""
    return Path(os.environ.get("OBSERVATORY_CONFIG", "observatory.toml"))


def read_toml_table(table: str) -> dict[str, Any]:
    """One table of ``observatory.toml`` (empty when the file or table is absent)."""
    path = config_file()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    section = data.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [{table}] must be a table")
    return section


class _TomlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], table: str):
        super().__init__(settings_cls)
        self._table = table

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return read_toml_table(self._table)


class TableSettings(BaseSettings):
    """Base of the other settings groups (``[serve]``, ``[auth]``, ``[pipeline]``, ``[canary]``):
    explicit values, then ``OBSERVATORY_<GROUP>_*`` variables, then that table of
    ``observatory.toml``, then defaults; :meth:`load` raises :class:`ConfigError` naming the key."""

    toml_table: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _TomlSource(settings_cls, cls.toml_table)

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Build the settings (``None`` overrides are ignored)."""
        table, prefix = cls.toml_table, str(cls.model_config.get("env_prefix", ""))
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as e:
            problems = []
            for err in e.errors():
                field = str(err["loc"][0]) if err["loc"] else ""
                if err["type"] == "extra_forbidden":
                    problems.append(f"unknown {table} setting {field!r} (known: {', '.join(cls.model_fields)})")
                elif field:
                    where = f"{prefix}{field.upper()} or {config_file()} [{table}] {field}"
                    problems.append(f"invalid {table} setting {field!r} (set via {where}): {err['msg']}")
                else:
                    problems.append(f"invalid {table} settings: {err['msg']}")
            raise ConfigError("; ".join(problems)) from None


def _where(field: str) -> str:
    otel = [k for k, v in OTEL_ENV.items() if v == field]
    places = [*otel, f"OBSERVATORY_{field.upper()}", f"{config_file()} [telemetry] {field}"]
    return " / ".join(places)


def load(**overrides: Any) -> Settings:
    """Build :class:`Settings`; raise :class:`ConfigError` naming the bad key."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown setting {field!r} (check the spelling; see README 'Configuration')")
            else:
                problems.append(f"invalid setting {field!r} (set via {_where(field)}): {err['msg']}")
        raise ConfigError("; ".join(problems)) from None


def state_dir() -> Path:
    """The state folder: ``OBSERVATORY_STATE_DIR``, else ``observatory.toml``'s, else ``./.observatory``."""
    raw = os.environ.get("OBSERVATORY_STATE_DIR") or read_toml_table("telemetry").get("state_dir")
    return Path(raw or ".observatory").resolve()
