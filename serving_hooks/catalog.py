"""The model catalog: which models the gateway serves, under which names, with which bounds.

A catalog is plain, validated data (no backend, no connection): a list of :class:`ModelEntry`, each
a public name callers put in ``model`` (plus optional ``aliases``), a ``kind`` (``mlflow``: the
in-process champion of a registered model, with its canary or shadow as the single-model settings
have them; ``upstream``: one OpenAI-compatible server at ``url`` or a pool of ``replicas``), its
bounds (``max_tokens``, ``context_tokens``, ``max_n``; unset: the global ``ServeSettings`` ones),
``labels`` for telemetry, an optional required ``scope`` (callers without it neither see nor call
the model) and ``fallbacks`` (models used when this one's pool has no healthy replica). An
``upstream`` entry may shadow too: ``shadow_share``/``shadow_tenants`` with ``shadow_replicas`` (the
challenger's pool), ``shadow_upstream_model`` and ``shadow_concurrency``.

:func:`load` reads a TOML file of ``[[models]]`` tables (README "Model catalog");
:func:`from_settings` maps today's single-model settings (``backend``, ``model``, ``upstream_url``,
``upstream_models``) to a one-entry catalog, so they keep working unchanged. Every problem is a
:class:`~telemetry.settings.ConfigError` naming the file, the entry and the key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from gpt_observatory.serving_hooks.gateway import Bounds
from gpt_observatory.serving_hooks.settings import CanarySticky, ServeSettings
from gpt_observatory.telemetry.settings import ConfigError

Kind = Literal["mlflow", "upstream"]
_UPSTREAM_SHADOW = ("shadow_replicas", "shadow_upstream_model", "shadow_concurrency")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")  # what a model id may look like
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_MAX_LABEL_VALUE = 128


def _name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{what} {value!r} must be 1-128 characters of letters, digits and ._:/@+- "
                         "(starting with a letter or digit)")
    return value


class Replica(BaseModel):
    """One server of an upstream pool: its OpenAI base URL, a name (a bounded metric label), a weight
    and its own key (``api_key``, or ``api_key_env``: the variable holding it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(pattern=r"^https?://")
    name: str | None = None  # default: host:port of the URL
    weight: float = Field(1.0, gt=0, le=1000)
    api_key: SecretStr | None = None
    api_key_env: str | None = None


class ModelEntry(BaseModel):
    """One served model (see the module docstring for what each key means)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Kind
    aliases: tuple[str, ...] = ()
    # Bounds: unset, the global ServeSettings max_tokens_limit / context_tokens / max_n.
    max_tokens: int | None = Field(None, ge=1, le=1 << 20)
    context_tokens: int | None = Field(None, ge=1)
    max_n: int | None = Field(None, ge=1, le=128)
    labels: dict[str, str] = Field(default_factory=dict)
    scope: str | None = None
    fallbacks: tuple[str, ...] = ()
    # kind = "mlflow": models:/registered_model@alias, with the single-model settings' canary/shadow keys.
    registered_model: str | None = None
    alias: str = "champion"
    canary_share: float = Field(0.0, ge=0.0, le=1.0)
    canary_tenants: tuple[str, ...] = ()
    canary_sticky: CanarySticky = "none"
    challenger_alias: str = "challenger"
    shadow_share: float = Field(0.0, ge=0.0, le=1.0)
    shadow_tenants: tuple[str, ...] = ()
    # kind = "upstream": one server (url) or a pool (replicas + the pool's PoolPolicy table).
    url: str | None = Field(None, pattern=r"^https?://")
    replicas: tuple[Replica, ...] = ()
    pool: dict[str, Any] = Field(default_factory=dict)
    upstream_model: str | None = None  # the id the upstream serves; unset: the public name
    provider: str | None = None  # gen_ai.provider.name; unset: upstream_provider
    api_key: SecretStr | None = None  # sent to every replica without its own; unset: upstream_api_key
    api_key_env: str | None = None
    # kind = "upstream" with shadow_share/shadow_tenants: the challenger's pool, the id it serves (unset:
    # upstream_model) and its mirror workers.
    shadow_replicas: tuple[Replica, ...] = ()
    shadow_upstream_model: str | None = None
    shadow_concurrency: int = Field(4, ge=1, le=256)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _name(value, "name")

    @field_validator("aliases", "fallbacks")
    @classmethod
    def _valid_names(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_name(v, "name") for v in values)

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if not _LABEL_KEY.match(key):
                raise ValueError(f"label key {key!r} must be lower-case letters, digits and _ (a metric label name)")
            if not isinstance(value, str) or len(value) > _MAX_LABEL_VALUE:
                raise ValueError(f"label {key!r} must be a string of at most {_MAX_LABEL_VALUE} characters")
        return labels

    @model_validator(mode="after")
    def _kind_needs(self) -> ModelEntry:
        mlflow_only = ("registered_model", "canary_share", "canary_tenants")
        upstream_only = ("url", "replicas", "pool", "upstream_model", "provider", "api_key", "api_key_env",
                         *_UPSTREAM_SHADOW)
        wrong = [k for k in (upstream_only if self.kind == "mlflow" else mlflow_only) if k in self.model_fields_set]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} do not apply to kind {self.kind!r}")
        if self.kind == "upstream" and bool(self.url) == bool(self.replicas):
            raise ValueError("kind 'upstream' needs either url (one server) or replicas (a pool), not both")
        if self.pool and not self.replicas:
            raise ValueError("pool settings need replicas")
        if self.kind == "upstream":
            self._upstream_shadow()
        if self.canary and self.shadow:
            raise ValueError("canary and shadow judge the same challenger: set canary_* or shadow_*")
        if (self.canary or self.shadow) and self.challenger_alias == self.alias:
            raise ValueError(f"challenger_alias must differ from alias ({self.alias!r})")
        if self.name in self.fallbacks:
            raise ValueError("a model cannot be its own fallback")
        return self

    def _upstream_shadow(self) -> None:
        """An upstream entry's shadow: shadow_share/shadow_tenants and the challenger's pool go together."""
        pool_keys = [k for k in _UPSTREAM_SHADOW if k in self.model_fields_set]
        if self.shadow and not self.shadow_replicas:
            given = "shadow_share" if self.shadow_share > 0 else "shadow_tenants"
            raise ValueError(f"{given} of an upstream model needs shadow_replicas (the challenger's pool, "
                             "[{ url = ... }, ...] as replicas)")
        if pool_keys and not self.shadow:
            raise ValueError(f"{', '.join(pool_keys)} need shadow_share (> 0) or shadow_tenants: "
                             "which requests to mirror to the challenger's pool")

    @property
    def canary(self) -> bool:
        return self.canary_share > 0 or bool(self.canary_tenants)

    @property
    def shadow(self) -> bool:
        return self.shadow_share > 0 or bool(self.shadow_tenants)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name that resolves to this entry: its public name, then its aliases."""
        return (self.name, *self.aliases)

    @property
    def backend_model(self) -> str:
        """The model id the backend answers to: the registered model (mlflow) or the upstream's id."""
        if self.kind == "mlflow":
            return self.registered_model or self.name
        return self.upstream_model or self.name


class Catalog:
    """Validated entries, looked up by public name or alias. ``legacy``: built from the single-model
    settings (its one entry is served exactly as those settings always were)."""

    def __init__(self, entries: tuple[ModelEntry, ...], settings: ServeSettings, *, legacy: bool = False,
                 source: str = "settings") -> None:
        self.entries = entries
        self.settings = settings
        self.legacy = legacy
        self.source = source
        self._by_name: dict[str, ModelEntry] = {}
        for entry in entries:
            for name in entry.names:
                if name in self._by_name:
                    raise ConfigError(f"{source}: model name {name!r} is used twice (entries "
                                      f"{self._by_name[name].name!r} and {entry.name!r}); names and aliases are unique")
                self._by_name[name] = entry
        for entry in entries:
            missing = [f for f in entry.fallbacks if f not in self._by_name]
            if missing:
                raise ConfigError(f"{source}: model {entry.name!r} falls back to {', '.join(map(repr, missing))}, "
                                  "which the catalog does not declare")
        if not entries:
            raise ConfigError(f"{source}: the catalog declares no model (add a [[models]] table)")

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: str | None) -> ModelEntry | None:
        """The entry ``name`` (a public name or an alias) resolves to, or None."""
        return self._by_name.get(name) if name is not None else None

    def bounds(self, entry: ModelEntry) -> Bounds:
        """The bounds a request for ``entry`` is held to: its own, else the global settings'."""
        s, where = self.settings, f"model {entry.name!r} in {self.source}"
        env = "OBSERVATORY_SERVE_"
        return Bounds(
            max_n=entry.max_n or s.max_n,
            max_best_of=s.max_best_of,
            max_tokens_limit=entry.max_tokens or s.max_tokens_limit,
            context_tokens=entry.context_tokens or s.context_tokens,
            # What a request without max_tokens may generate in process; an upstream's is not known here.
            default_max_tokens=_default_max_tokens() if entry.kind == "mlflow" else None,
            n_setting=f"max_n of {where}" if entry.max_n else f"{env}MAX_N",
            max_tokens_setting=f"max_tokens of {where}" if entry.max_tokens else f"{env}MAX_TOKENS_LIMIT",
        )


def _default_max_tokens() -> int:
    from gpt_observatory.generation import DEFAULT_MAX_TOKENS

    return DEFAULT_MAX_TOKENS


def from_settings(settings: ServeSettings) -> Catalog:
    """The one-entry catalog the single-model settings describe (``model`` and ``upstream_models``)."""
    aliases = tuple(dict.fromkeys(m for m in settings.upstream_models if m != settings.model))
    entry = ModelEntry.model_construct(  # the settings are validated already; names are whatever they allowed
        name=settings.model, kind=settings.backend, aliases=aliases, labels={}, fallbacks=(),
        max_tokens=None, context_tokens=None, max_n=None, scope=None, replicas=(), pool={},
    )
    return Catalog((entry,), settings, legacy=True)


def load(path: Path, settings: ServeSettings) -> Catalog:
    """Read and validate the catalog file at ``path``; :class:`ConfigError` says what is wrong and where."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read the model catalog {path} ({e.strerror or e}); "
                          "check OBSERVATORY_SERVE_CATALOG_FILE") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"the model catalog {path} is not valid TOML: {e}") from None
    return parse(data, settings, source=str(path))


def toml_tables(data: Mapping[str, Any], key: str, source: str) -> list[dict[str, Any]]:
    """The ``[[key]]`` tables of a parsed TOML file that holds nothing else (the catalog, the prices)."""
    unknown = set(data) - {key}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {', '.join(sorted(unknown))} (only [[{key}]] tables)")
    tables = data.get(key, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{source}: '{key}' must be an array of tables ([[{key}]])")
    return tables


def parse(data: Mapping[str, Any], settings: ServeSettings, *, source: str = "catalog") -> Catalog:
    """Validate a catalog given as data (the parsed TOML: ``{"models": [{...}, ...]}``)."""
    tables = toml_tables(data, "models", source)
    entries = []
    for i, table in enumerate(tables):
        label = f"{source}: [[models]] #{i + 1}" + (f" ({table['name']!r})" if isinstance(table.get("name"), str) else "")
        try:
            entries.append(ModelEntry.model_validate(table))
        except ValidationError as e:
            problems = []
            for err in e.errors():
                key = ".".join(str(p) for p in err["loc"]) or "entry"
                problem = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
                problems.append(f"{key}: {problem}")
            raise ConfigError(f"{label}: {'; '.join(problems)}") from None
    return Catalog(tuple(entries), settings, source=source)
