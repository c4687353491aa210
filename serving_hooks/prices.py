"""Prices per catalog model, and what a request costs, in integer micro-units of a currency.

A prices file (TOML, ``prices_file``) holds ``[[prices]]`` tables::

    [[prices]]
    model = "llama-70b"            # a catalog name
    effective_from = 2026-12-01T00:00:00Z
    currency = "USD"               # explicit: a table in another currency than budget_currency is refused
    input_per_1m = "0.60"          # currency units per 1M input tokens (a decimal string or a number)
    output_per_1m = "2.40"
    cached_input_per_1m = "0.15"   # optional: cached prompt tokens (unset: the input price)
    gpu_second = "0.0011"          # optional: per GPU-second (in-process models)

Every amount is turned into integer micro-units (1 USD = 1,000,000) when read, exactly (``Decimal``;
finer than a micro-unit per 1M tokens is refused), and a cost is computed once, in integers, rounded up
to the next micro-unit: no float is ever summed. A price change applies from its ``effective_from``:
:meth:`PriceTable.price_at` is the latest entry of the model that is not in the future at that time.

The functions the usage ledger calls are :meth:`PriceTable.price_at` and :func:`cost_micro`. A request is
priced by its catalog entry's name: :func:`warn_unserved` logs the prices that can never apply (a model the
catalog does not declare, or one of its aliases), at start and at each reload of either file.
"""

from __future__ import annotations

import bisect
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from gpt_observatory.serving_hooks.catalog import toml_tables
from gpt_observatory.telemetry.settings import ConfigError

if TYPE_CHECKING:
    from gpt_observatory.serving_hooks.catalog import Catalog

__all__ = ["MICRO", "Price", "PriceTable", "cost_micro", "load", "parse", "to_micro", "unserved", "warn_unserved"]

MICRO = 1_000_000  # micro-units per currency unit
_PER = 1_000_000  # tokens a per-token price is quoted for
_KEYS = frozenset({"model", "effective_from", "currency", "input_per_1m", "output_per_1m", "cached_input_per_1m",
                   "gpu_second"})


@dataclass(frozen=True, slots=True)
class Price:
    """One model's price from ``effective_from`` on, in micro-units of ``currency``."""

    model: str
    effective_from: datetime
    currency: str
    input_micro_per_1m: int = 0
    output_micro_per_1m: int = 0
    cached_input_micro_per_1m: int | None = None  # None: cached tokens cost the input price
    gpu_second_micro: int = 0


def to_micro(value: Any, what: str = "amount") -> int:
    """``value`` (a decimal string, an int, or a float read from TOML by its shortest repr) in
    integer micro-units; ValueError when negative or finer than a micro-unit."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise ValueError(f"{what} must be a decimal number such as \"0.60\"")
    try:
        amount = Decimal(str(value)) * MICRO
    except InvalidOperation:
        raise ValueError(f"{what} {value!r} is not a decimal number") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{what} must be a finite amount of at least 0")
    if amount != amount.to_integral_value():
        raise ValueError(f"{what} {value!r} is finer than a micro-unit (6 decimals)")
    return int(amount)


def cost_micro(
    price: Price | None, input_tokens: int = 0, output_tokens: int = 0, cached_tokens: int = 0,
    gpu_seconds: float | Decimal | None = None,
) -> int:
    """What a request cost under ``price``, in integer micro-units, rounded up once (0 without a price).

    ``cached_tokens`` are the part of ``input_tokens`` read from a prompt cache (charged the cached
    price); ``gpu_seconds`` (in-process models; None: unknown) is charged per GPU-second.
    """
    if price is None:
        return 0
    cached = min(max(0, cached_tokens), max(0, input_tokens))
    fresh = max(0, input_tokens) - cached
    cached_price = price.input_micro_per_1m if price.cached_input_micro_per_1m is None else price.cached_input_micro_per_1m
    tokens = fresh * price.input_micro_per_1m + cached * cached_price + max(0, output_tokens) * price.output_micro_per_1m
    total = Decimal(tokens) / _PER
    if gpu_seconds is not None and price.gpu_second_micro:
        total += Decimal(str(max(0.0, gpu_seconds))) * price.gpu_second_micro
    return int(total.to_integral_value(ROUND_CEILING))


class PriceTable:
    """Every model's prices over time; :meth:`price_at` is the one in force."""

    def __init__(self, prices: tuple[Price, ...] = (), source: str = "prices") -> None:
        self.source = source
        self._by_model: dict[str, tuple[list[datetime], list[Price]]] = {}
        for p in sorted(prices, key=lambda p: (p.model, p.effective_from)):
            times, entries = self._by_model.setdefault(p.model, ([], []))
            if times and times[-1] == p.effective_from:
                raise ConfigError(f"{source}: model {p.model!r} has two prices from {p.effective_from.isoformat()}")
            times.append(p.effective_from)
            entries.append(p)

    def __len__(self) -> int:
        return sum(len(e) for _, e in self._by_model.values())

    @property
    def models(self) -> frozenset[str]:
        return frozenset(self._by_model)

    def price_at(self, model: str, when: datetime | None = None) -> Price | None:
        """The price of ``model`` in force at ``when`` (aware; default now), or None (no price: free)."""
        found = self._by_model.get(model)
        if found is None:
            return None
        times, entries = found
        i = bisect.bisect_right(times, when or datetime.now(UTC))
        return entries[i - 1] if i else None


def parse(data: Mapping[str, Any], currency: str, *, source: str = "prices") -> PriceTable:
    """Validate a prices file given as data (``{"prices": [{...}, ...]}``), every price in ``currency``."""
    tables = toml_tables(data, "prices", source)
    prices = []
    for i, t in enumerate(tables):
        where = f"{source}: [[prices]] #{i + 1}" + (f" ({t['model']!r})" if isinstance(t.get("model"), str) else "")
        try:
            prices.append(_price(t, currency))
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    return PriceTable(tuple(prices), source)


def _price(t: Mapping[str, Any], currency: str) -> Price:
    extra = set(t) - _KEYS
    if extra:
        raise ValueError(f"unknown key(s) {', '.join(sorted(extra))}")
    model, when, cur = t.get("model"), t.get("effective_from"), t.get("currency")
    if not isinstance(model, str) or not model:
        raise ValueError("model: a catalog model name is required")
    if not isinstance(when, datetime) or when.tzinfo is None:
        raise ValueError("effective_from: an offset date-time is required, e.g. 2026-12-01T00:00:00Z")
    if cur != currency:
        raise ValueError(f"currency must be given and be {currency!r} (OBSERVATORY_SERVE_BUDGET_CURRENCY), got {cur!r}")
    if not any(k in t for k in ("input_per_1m", "output_per_1m", "gpu_second")):
        raise ValueError("give input_per_1m / output_per_1m and/or gpu_second")
    cached = t.get("cached_input_per_1m")
    return Price(
        model, when.astimezone(UTC), cur,
        to_micro(t.get("input_per_1m", 0), "input_per_1m"), to_micro(t.get("output_per_1m", 0), "output_per_1m"),
        None if cached is None else to_micro(cached, "cached_input_per_1m"), to_micro(t.get("gpu_second", 0), "gpu_second"),
    )


def load(path: Path, currency: str) -> PriceTable:
    """Read and validate the prices file at ``path``; :class:`ConfigError` says what is wrong and where."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read the prices file {path} ({e.strerror or e}); "
                          "check OBSERVATORY_SERVE_PRICES_FILE") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"the prices file {path} is not valid TOML: {e}") from None
    return parse(data, currency, source=str(path))


def unserved(table: PriceTable, catalog: Catalog) -> str | None:
    """What ``table`` prices that ``catalog`` never bills (None: every price names a catalog entry): a model
    the catalog does not declare, or an alias (a request is priced by its entry's name, whatever it called)."""
    unknown = sorted(m for m in table.models if catalog.get(m) is None)
    aliases = sorted((m, e.name) for m in table.models if (e := catalog.get(m)) is not None and e.name != m)
    if not unknown and not aliases:
        return None
    parts = [f"model(s) {', '.join(map(repr, unknown))} not in the catalog"] if unknown else []
    if aliases:
        parts.append("alias(es) " + ", ".join(f"{a!r} (of {n!r})" for a, n in aliases))
    where = ("the single model of --model / OBSERVATORY_SERVE_MODEL (no catalog_file)" if catalog.legacy
             else catalog.source)
    return (f"{table.source}: the [[prices]] of {' and '.join(parts)} price nothing: requests are priced by their "
            f"catalog name, and the catalog ({where}) names {', '.join(repr(e.name) for e in catalog)}; "
            "set model to one of these")


def warn_unserved(table: PriceTable, catalog: Catalog) -> str | None:
    """Log :func:`unserved`'s warning, if any, and return it (serving goes on: those models are free)."""
    message = unserved(table, catalog)
    if message is not None:
        logger.warning("{}", message)
    return message
