"""The tenants table: per tenant its rate limits, the models it may call, its budget and labels.

A tenants file (TOML, ``tenants_file``)::

    [tiers.default]                       # what tenants not in the table get (settings: default_tier)
    requests_per_minute = 60
    tokens_per_minute = 100000
    models = ["*"]                        # catalog names, fnmatch globs
    budget = { amount = "10.00", period = "month" }

    [[tenants]]
    name = "acme"
    tier = "default"                      # optional: start from a tier, then override
    requests_per_minute = 600
    models = ["llama-*", "tiny-gpt"]
    budget = { amount = "250.00", period = "day" }     # day | month (UTC) | window
    labels = { team = "search" }

    [[tenants]]
    name = "pilot"
    budget = { amount = "50", period = "window", starts = 2026-12-01T00:00:00Z, ends = 2027-01-01T00:00:00Z }

Budget amounts are in ``budget_currency`` (integer micro-units once read; see ``serving_hooks.prices``).
Unset limits fall back to the global settings (``requests_per_minute``...); ``models`` unset: every
model. A tenant not in the table gets ``default_tier`` (or is refused with ``refuse_unknown_tenants``).
The table narrows what the IdP allows, never widens it: a model a tenant may call still needs the
scopes the catalog and ``model_scopes`` require.

The file is checked for changes every ``tenants_poll_s`` seconds (:class:`TenantsReloader`): a file
that does not parse keeps the table already serving (logged and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from loguru import logger
from opentelemetry import metrics

from gpt_observatory.serving_hooks._catalog_reload import file_stamp
from gpt_observatory.serving_hooks.prices import to_micro
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.settings import ConfigError

__all__ = ["Budget", "Tenant", "TenantTable", "TenantsReloader", "load", "parse"]

Period = Literal["day", "month", "window"]
_TENANT_KEYS = frozenset({"name", "tier", "requests_per_minute", "tokens_per_minute", "models", "budget", "labels"})
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class Budget:
    """``amount_micro`` to spend per ``period``: a UTC ``day``, a UTC ``month``, or the one ``window``."""

    amount_micro: int
    period: Period
    starts: datetime | None = None  # window only
    ends: datetime | None = None

    def window(self, now: datetime) -> tuple[datetime, datetime] | None:
        """The period ``now`` falls in (start, end), or None outside a fixed window (nothing may be spent)."""
        now = now.astimezone(UTC)
        if self.period == "day":
            start = now.replace(hour=0, minute=0, second=0, microsecond=0)
            return start, start + timedelta(days=1)
        if self.period == "month":
            start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
            return start, end
        assert self.starts is not None and self.ends is not None
        return (self.starts, self.ends) if self.starts <= now < self.ends else None


@dataclass(frozen=True, slots=True)
class Tenant:
    """What one tenant may do (None: the global setting, or no budget)."""

    name: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    models: tuple[str, ...] = ("*",)
    budget: Budget | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    known: bool = True  # False: a tenant not in the table, on the default tier

    def may_call(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def may_call_entry(self, names: Iterable[str]) -> bool:
        """Whether the tenant may call a catalog entry known by ``names`` (its public name and aliases):
        one of them allowed is enough. What the gateway admits and what ``/v1/models`` lists."""
        return any(self.may_call(name) for name in names)


class TenantTable:
    """Tenants by name, and the tier unknown tenants get (None: they are refused)."""

    def __init__(self, tenants: Mapping[str, Tenant], default: Tenant | None, source: str = "tenants") -> None:
        self.tenants = dict(tenants)
        self.default = default
        self.source = source

    def get(self, name: str) -> Tenant | None:
        """The tenant ``name``; one on the default tier when it is not in the table; None when refused."""
        tenant = self.tenants.get(name)
        if tenant is not None:
            return tenant
        if self.default is None:
            return None
        return Tenant(name, self.default.requests_per_minute, self.default.tokens_per_minute, self.default.models,
                      self.default.budget, self.default.labels, known=False)


def _budget(value: Any) -> Budget:
    if not isinstance(value, dict):
        raise ValueError("budget must be a table: { amount = \"10.00\", period = \"month\" }")
    extra = set(value) - {"amount", "period", "starts", "ends"}
    if extra:
        raise ValueError(f"budget: unknown key(s) {', '.join(sorted(extra))}")
    period = value.get("period")
    if period not in ("day", "month", "window"):
        raise ValueError(f"budget.period must be 'day', 'month' or 'window', got {period!r}")
    amount = to_micro(value.get("amount"), "budget.amount")
    starts, ends = value.get("starts"), value.get("ends")
    if period == "window":
        for key, when in (("starts", starts), ("ends", ends)):
            if not isinstance(when, datetime) or when.tzinfo is None:
                raise ValueError(f"budget.{key}: a window needs an offset date-time, e.g. 2026-12-01T00:00:00Z")
        if ends <= starts:
            raise ValueError("budget.ends must be after budget.starts")
        return Budget(amount, period, starts.astimezone(UTC), ends.astimezone(UTC))
    if starts is not None or ends is not None:
        raise ValueError("budget.starts/ends apply to period 'window' only")
    return Budget(amount, period)


def _limit(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be an integer of at least 1")
    return value


def _tenant(name: str, t: Mapping[str, Any], base: Tenant | None) -> Tenant:
    models = t.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)):
        raise ValueError("models must be a list of catalog names or globs, e.g. [\"llama-*\"]")
    labels = t.get("labels", {})
    if not isinstance(labels, dict) or not all(_LABEL_KEY.match(k) and isinstance(v, str) and len(v) <= 128
                                               for k, v in labels.items()):
        raise ValueError("labels must map lower-case keys (letters, digits, _) to strings of at most 128 characters")
    base = base or Tenant(name)
    return Tenant(
        name,
        _limit(t.get("requests_per_minute"), "requests_per_minute") or base.requests_per_minute,
        _limit(t.get("tokens_per_minute"), "tokens_per_minute") or base.tokens_per_minute,
        tuple(models) if models is not None else base.models,
        _budget(t["budget"]) if "budget" in t else base.budget,
        {**base.labels, **labels},
    )


def parse(data: Mapping[str, Any], *, default_tier: str | None = "default", refuse_unknown: bool = False,
          source: str = "tenants") -> TenantTable:
    """Validate a tenants file given as data; ``default_tier`` names the tier of tenants not in the table
    (absent from the file: no limits of its own, every model, no budget)."""
    unknown = set(data) - {"tiers", "tenants"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {', '.join(sorted(unknown))} ([tiers.*] and [[tenants]])")
    tiers_data = data.get("tiers", {})
    if not isinstance(tiers_data, dict):
        raise ConfigError(f"{source}: 'tiers' must be tables ([tiers.NAME])")
    tiers: dict[str, Tenant] = {}
    for tier, t in tiers_data.items():
        try:
            if not isinstance(t, dict):
                raise ValueError("must be a table")
            extra = set(t) - (_TENANT_KEYS - {"name", "tier"})
            if extra:
                raise ValueError(f"unknown key(s) {', '.join(sorted(extra))}")
            tiers[tier] = _tenant(tier, t, None)
        except ValueError as e:
            raise ConfigError(f"{source}: [tiers.{tier}]: {e}") from None
    tables = data.get("tenants", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{source}: 'tenants' must be an array of tables ([[tenants]])")
    tenants: dict[str, Tenant] = {}
    for i, t in enumerate(tables):
        name = t.get("name")
        where = f"{source}: [[tenants]] #{i + 1}" + (f" ({name!r})" if isinstance(name, str) else "")
        try:
            extra = set(t) - _TENANT_KEYS
            if extra:
                raise ValueError(f"unknown key(s) {', '.join(sorted(extra))}")
            if not isinstance(name, str) or not name:
                raise ValueError("name: the tenant (as the IdP or the API key names it) is required")
            if name in tenants:
                raise ValueError("the tenant is listed twice")
            tier = t.get("tier")
            if tier is not None and tier not in tiers:
                raise ValueError(f"tier {tier!r} is not declared ([tiers.{tier}])")
            tenants[name] = _tenant(name, t, tiers.get(tier) if tier else None)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    default = None
    if not refuse_unknown:
        default = tiers.get(default_tier or "", Tenant("")) if default_tier else Tenant("")
    return TenantTable(tenants, default, source)


def load(path: Path, *, default_tier: str | None = "default", refuse_unknown: bool = False) -> TenantTable:
    """Read and validate the tenants file at ``path``; :class:`ConfigError` says what is wrong and where."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read the tenants file {path} ({e.strerror or e}); "
                          "check OBSERVATORY_SERVE_TENANTS_FILE") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"the tenants file {path} is not valid TOML: {e}") from None
    return parse(data, default_tier=default_tier, refuse_unknown=refuse_unknown, source=str(path))


class TenantsReloader:
    """Re-reads files whose identity (mtime, size, inode) changed, every ``poll_s`` seconds; ``load(path)``
    returns the new value and ``apply(value)`` serves it. SIGHUP is the catalog's (one handler per signal):
    a change is seen at the next poll."""

    def __init__(self, files: Mapping[Path, Any], poll_s: float = 2.0) -> None:
        self.files = {Path(p): pair for p, pair in files.items()}  # path -> (load, apply)
        self.poll_s = poll_s
        self._stamps = {p: file_stamp(p) for p in self.files}
        self._task: asyncio.Task[None] | None = None
        m = names.TENANTS_RELOADS
        self._reloads = metrics.get_meter(__name__).create_counter(m.name, m.unit, m.description)

    async def start(self) -> None:
        self._stamps = {p: file_stamp(p) for p in self.files}
        self._task = asyncio.create_task(self._watch(), name="tenants-reload")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            for path in self.files:
                stamp = file_stamp(path)
                if stamp != self._stamps[path]:
                    self._stamps[path] = stamp
                    await self.reload(path)

    async def reload(self, path: Path) -> str:
        """Read ``path`` and serve it: ``ok``, or ``invalid`` with the previous table still serving."""
        read, apply = self.files[Path(path)]
        try:
            apply(await asyncio.to_thread(read, path))
            outcome = "ok"
            logger.info("metering file {} reloaded", path)
        except ConfigError as e:
            logger.error("metering reload refused: {}; the previous table keeps serving", e)
            outcome = "invalid"
        self._reloads.add(1, {names.CATALOG_RELOAD_OUTCOME: outcome})
        return outcome
