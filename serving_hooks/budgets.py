"""Budgets per tenant, enforced: reserve the worst case before a call, settle to the real cost after.

Before a call the gateway asks :meth:`Metering.reserve` with the request's worst case (the prompt
estimate and ``n x max_tokens``, the same figures the tokens-per-minute reservation uses), priced at the
model's price in force (:mod:`serving_hooks.prices`). The store adds it to the tenant's spend for the
current period only if the sum stays within the budget, in one atomic step, so concurrent requests on
every gateway replica and worker together never charge more than the budget; a request that does not
fit is refused (429, ``insufficient_quota``, with ``Retry-After`` and ``x-observatory-budget-reset``
at the period's end). After the call, whatever its outcome, :meth:`Metering.settle` turns the
reservation into the real cost (the usage the model reported, cached tokens and GPU-seconds where a
layer below reports them). Spend therefore never exceeds the budget by more than the prompt estimate's
error of the requests in flight, and, for a model priced per GPU-second (not known before the call, so
not in the worst case), their GPU time.

The refusal's type and code are OpenAI's ``insufficient_quota`` (what OpenAI answers a spent quota):
clients and SDKs built for OpenAI already know it means "waiting a minute does not help", unlike
``rate_limit_exceeded``; the message says it is this gateway's budget and when it resets.

Stores (:mod:`serving_hooks._budget_stores`): Redis (``redis_url``; two Lua scripts, one round trip
each), else the ``limits`` storage the rate limiter uses (the supervisor's host store with ``serve --workers N``, or this process's memory).
The host store serves ``limits``' storage calls only, not scripts, so there the reservation is an atomic
``incr`` that is given back when it went past the budget: never an overdraft, but two requests racing
for the last of a budget may both be refused where Redis would admit one.

Store failures and timeouts follow ``budget_fail_mode``: ``open`` (default) admits the request unchecked,
``closed`` refuses it (503, ``Retry-After: 1``); both are counted on
``observatory.gateway.budget.store_failures`` and logged at most once a minute; after a failure the
store is left alone for a second, as the rate limiter does.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from limits.storage import storage_from_string
from loguru import logger
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from gpt_observatory.serving_hooks import _hoststore
from gpt_observatory.serving_hooks._budget_stores import BudgetStore, LimitsBudgetStore, RedisBudgetStore
from gpt_observatory.serving_hooks._errors import ApiError
from gpt_observatory.serving_hooks.prices import Price, PriceTable, cost_micro, warn_unserved
from gpt_observatory.serving_hooks.tenants import Tenant, TenantsReloader, TenantTable
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.summed import SummedCounter

if TYPE_CHECKING:
    from gpt_observatory.serving_hooks.catalog import Catalog
    from gpt_observatory.serving_hooks.ratelimit import RateLimiter
    from gpt_observatory.serving_hooks.settings import ServeSettings

__all__ = ["BudgetStore", "Hold", "LimitsBudgetStore", "Metering", "RedisBudgetStore", "metering_for"]

FailMode = Literal["open", "closed"]
_MARGIN_S = 86400  # a period's key outlives its end by a day: late settlements still land in it


@dataclass(frozen=True, slots=True)
class Hold:
    """What one admitted request holds: its tenant, the model's price, and the budget reserved
    (``key`` None: nothing reserved: no budget, no price, or the store failed open)."""

    tenant: Tenant
    price: Price | None = None
    key: str | None = None
    reserved: int = 0
    ttl_s: int = 0


class Metering:
    """Tenants, prices and budgets as the gateway asks about them; each table can be swapped live."""

    def __init__(
        self, tenants: TenantTable, prices: PriceTable | None = None, store: BudgetStore | None = None, *,
        fail_mode: FailMode = "open", currency: str = "USD", namespace: str = "observatory",
        limiter_for: Callable[[int | None, int | None], RateLimiter | None] | None = None,
        retry_after_failure_s: float = 1.0, clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.tenants = tenants
        self.prices = prices or PriceTable()
        self.store = store
        self.fail_mode = fail_mode
        self.currency = currency
        self.namespace = namespace
        self._limiter_for = limiter_for
        self.reloader: TenantsReloader | None = None
        self.catalog: Callable[[], Catalog] | None = None  # the catalog serving (create_listeners sets it)
        self._limiters: dict[tuple[int | None, int | None], RateLimiter | None] = {}
        self._clock = clock or (lambda: datetime.now(UTC))
        self._retry_after_failure_s = retry_after_failure_s
        self._skip_until = 0.0
        self._last_failure = "error"
        self._last_warning = 0.0
        self._failures = SummedCounter.of(__name__, names.BUDGET_STORE_FAILURES)
        self._cost = SummedCounter.of(__name__, names.USAGE_COST)
        self.seen: dict[str, tuple[int, int]] = {}  # tenant -> (spent, limit), for the gauges
        self._costed: set[str] = set()  # default-tier tenants with a cost series of their own
        _METERINGS.add(self)
        _watch(metrics.get_meter(__name__))

    # ------------------------------------------------------------------ tenants and limits
    def tenant(self, name: str) -> Tenant | None:
        """The tenant's policy (its tier when it is not in the table), or None when it is refused."""
        return self.tenants.get(name)

    def limiter(self, tenant: Tenant) -> RateLimiter | None:
        """The limiter of the tenant's own RPM/TPM (None: the gateway's global one applies)."""
        if self._limiter_for is None or (tenant.requests_per_minute is None and tenant.tokens_per_minute is None):
            return None
        pair = (tenant.requests_per_minute, tenant.tokens_per_minute)
        if pair not in self._limiters:
            self._limiters[pair] = self._limiter_for(*pair)
        return self._limiters[pair]

    # ------------------------------------------------------------------ budgets
    async def reserve(self, tenant: Tenant, model: str | None, input_tokens: int, output_tokens: int) -> Hold:
        """Reserve the worst case (``input_tokens`` + ``output_tokens`` at the model's price); raise the
        429 (over budget) or, failing closed, the 503 (store down)."""
        now = self._clock()
        price = self.prices.price_at(model, now) if model is not None else None
        budget = tenant.budget
        if budget is None:
            return Hold(tenant, price)
        window = budget.window(now)
        if window is None:
            raise _outside_window(tenant.name, budget.starts, budget.ends)
        start, end = window
        worst = cost_micro(price, input_tokens, output_tokens)
        if worst > budget.amount_micro:
            raise _too_costly(worst, budget.amount_micro, self.currency)
        if worst == 0 or self.store is None:
            return Hold(tenant, price)
        key = f"{self.namespace}:budget:{tenant.name}:{int(start.timestamp())}"
        ttl_s = max(1, math.ceil((end - now).total_seconds())) + _MARGIN_S
        if time.monotonic() < self._skip_until:
            return self._store_down(tenant, price, self._last_failure)
        try:
            ok, spent = await self.store.reserve(key, worst, budget.amount_micro, ttl_s)
        except Exception as e:
            return self._store_down(tenant, price, self._failed(e))
        self._note(tenant, spent)
        if not ok:
            raise _over_budget(tenant.name, end, now, spent, budget.amount_micro, worst, self.currency)
        return Hold(tenant, price, key, worst, ttl_s)

    async def settle(self, hold: Hold, input_tokens: int, output_tokens: int, cached_tokens: int = 0,
                     gpu_seconds: float | None = None) -> int:
        """Turn ``hold``'s reservation into the real cost of the usage reported; returns that cost (counted on
        ``observatory.usage.cost`` when the model is priced, budget or not)."""
        cost = cost_micro(hold.price, input_tokens, output_tokens, cached_tokens, gpu_seconds)
        if hold.price is not None:
            self._cost.add(cost, {names.TENANT: self._cost_label(hold.tenant), names.CATALOG_MODEL: hold.price.model,
                                  names.USAGE_CURRENCY: hold.price.currency})
        if hold.key is None or self.store is None or cost == hold.reserved:
            return cost
        try:
            self._note(hold.tenant, await self.store.adjust(hold.key, cost - hold.reserved, hold.ttl_s))
        except Exception as e:
            self._failed(e)
        return cost

    def check_prices(self) -> None:
        """Warn of the prices the catalog serving never bills (at start and at each prices or catalog reload)."""
        if self.catalog is not None and len(self.prices):
            warn_unserved(self.prices, self.catalog())

    async def start(self) -> None:
        """Start watching the tenants and prices files (the gateway calls it at lifespan startup)."""
        if self.reloader is not None:
            await self.reloader.start()

    async def close(self) -> None:
        _METERINGS.discard(self)  # a closed metering's tenants leave the gauges now, not at garbage collection
        if self.reloader is not None:
            await self.reloader.close()
        for limiter in self._limiters.values():
            if limiter is not None:
                await limiter.close()
        if self.store is not None:
            await self.store.close()

    def _note(self, tenant: Tenant, spent: int) -> None:
        if tenant.budget is not None and (tenant.name in self.seen or len(self.seen) < names.BUDGET_TENANTS_TRACKED
                                          or tenant.known):
            self.seen[tenant.name] = (spent, tenant.budget.amount_micro)

    def _cost_label(self, tenant: Tenant) -> str:
        """The tenant's own label, bounded as the gauges' tenants are: the table's tenants, and the first
        BUDGET_TENANTS_TRACKED on the default tier; later ones are summed as USAGE_TENANT_OTHER."""
        if tenant.known or tenant.name in self._costed:
            return tenant.name
        if len(self._costed) < names.BUDGET_TENANTS_TRACKED:
            self._costed.add(tenant.name)
            return tenant.name
        return names.USAGE_TENANT_OTHER

    def _store_down(self, tenant: Tenant, price: Price | None, cause: str) -> Hold:
        self._failures.add(1, {names.BUDGET_FAILURE: cause, names.BUDGET_FAIL_MODE: self.fail_mode})
        if self.fail_mode == "closed":
            raise ApiError(503, "the budget store is unavailable and this gateway fails closed; retry shortly",
                           "server_error", "budget_store_unavailable", names.REJECTION_BUDGET, [(b"retry-after", b"1")])
        return Hold(tenant, price)

    def _failed(self, error: Exception) -> str:
        cause = "timeout" if isinstance(error, TimeoutError) or any(
            "Timeout" in c.__name__ for c in type(error).__mro__) else "error"
        now = time.monotonic()
        self._last_failure, self._skip_until = cause, now + self._retry_after_failure_s
        if now - self._last_warning > 60:
            self._last_warning = now
            logger.warning("budget store failed ({}: {}); failing {}", cause, type(error).__name__, self.fail_mode)
        return cause


# ------------------------------------------------------------------ spend gauges (one pair for every Metering)
_METERINGS: weakref.WeakSet[Metering] = weakref.WeakSet()
_watched: set[int] = set()


def _watch(meter: metrics.Meter) -> None:
    """One pair of observable gauges per meter, reading every live Metering (an observable instrument
    keeps its first callbacks: one pair per Metering would report the first one only)."""
    if id(meter) in _watched:
        return
    _watched.add(id(meter))
    for m, index in ((names.BUDGET_SPENT, 0), (names.BUDGET_LIMIT, 1)):
        meter.create_observable_gauge(m.name, [_observer(index)], m.unit, m.description)


def _observer(index: int) -> Callable[[CallbackOptions], Iterator[Observation]]:
    def observe(options: CallbackOptions) -> Iterator[Observation]:
        for metering in list(_METERINGS):
            for tenant, values in list(metering.seen.items()):
                yield Observation(values[index], {names.TENANT: tenant})
    return observe


def _money(micro: int, currency: str) -> str:
    return f"{micro / 1_000_000:.6f}".rstrip("0").rstrip(".") + f" {currency}"


def _over_budget(tenant: str, end: datetime, now: datetime, spent: int, limit: int, worst: int,
                 currency: str) -> ApiError:
    wait = max(1, math.ceil((end - now).total_seconds()))
    reset = end.strftime("%Y-%m-%dT%H:%M:%SZ")
    return ApiError(
        429, f"budget exceeded for tenant {tenant!r}: {_money(spent, currency)} of {_money(limit, currency)} spent "
             f"this period and this request may cost up to {_money(worst, currency)}; the budget resets at {reset} "
             "(lower max_tokens or n, or ask for a larger budget)",
        "insufficient_quota", "insufficient_quota", names.REJECTION_BUDGET,
        [(b"retry-after", str(wait).encode()), (b"x-observatory-budget-reset", reset.encode())],
    )


def _too_costly(worst: int, limit: int, currency: str) -> ApiError:
    return ApiError(
        429, f"request too large for the budget: it may cost up to {_money(worst, currency)} (prompt + n x max_tokens) "
             f"and the whole budget is {_money(limit, currency)}; lower max_tokens or n",
        "insufficient_quota", "insufficient_quota", names.REJECTION_BUDGET,
    )


def _outside_window(tenant: str, starts: datetime | None, ends: datetime | None) -> ApiError:
    span = f"{starts:%Y-%m-%dT%H:%M:%SZ} to {ends:%Y-%m-%dT%H:%M:%SZ}" if starts and ends else "its window"
    return ApiError(429, f"tenant {tenant!r} has a budget only from {span}; outside it nothing may be spent",
                    "insufficient_quota", "insufficient_quota", names.REJECTION_BUDGET)


def metering_for(settings: ServeSettings, host_store: Path | None = None) -> Metering | None:
    """The metering ``settings`` describe (None without a tenants or prices file), its budgets in Redis, the host
    store (``host_store``: the supervisor's socket) or this process's memory, as the rate limiter's are."""
    from gpt_observatory.serving_hooks import prices, tenants
    from gpt_observatory.serving_hooks.ratelimit import RateLimiter, storage_uri

    if settings.tenants_file is None and settings.prices_file is None:
        return None
    # Prices without a tenants file: every tenant alike (no limits of its own, every model, no budget).
    table = TenantTable({}, Tenant("")) if settings.tenants_file is None else tenants.load(
        settings.tenants_file, default_tier=settings.default_tier, refuse_unknown=settings.refuse_unknown_tenants)
    price_table = prices.load(settings.prices_file, settings.budget_currency) if settings.prices_file else None
    where = settings.limiter_store
    uri = None
    if where == "redis":
        store: BudgetStore = RedisBudgetStore(settings.redis_url or "", settings.redis_timeout_s)
    else:
        uri = _hoststore.uri(host_store) if where == "host" and host_store is not None else storage_uri(None)
        options = {"timeout_s": settings.redis_timeout_s} if uri.startswith(_hoststore.SCHEME) else {}
        store = LimitsBudgetStore(storage_from_string(uri, **options))

    def limiter_for(rpm: int | None, tpm: int | None) -> RateLimiter:
        return RateLimiter(
            requests_per_minute=rpm or settings.requests_per_minute, tokens_per_minute=tpm or settings.tokens_per_minute,
            redis_url=settings.redis_url, store=uri if where != "redis" else None,
            strategy=settings.rate_limit_strategy, namespace=settings.rate_limit_namespace,
            timeout_s=settings.redis_timeout_s,
        )

    metering = Metering(table, price_table, store, fail_mode=settings.budget_fail_mode,
                        currency=settings.budget_currency, namespace=settings.rate_limit_namespace,
                        limiter_for=limiter_for)

    def read_tenants(path: Path) -> TenantTable:
        return tenants.load(path, default_tier=settings.default_tier, refuse_unknown=settings.refuse_unknown_tenants)

    files: dict[Path, Any] = {}
    if settings.tenants_file is not None:
        files[settings.tenants_file] = (read_tenants, lambda t: setattr(metering, "tenants", t))
    if settings.prices_file is not None:
        def serve_prices(table: PriceTable) -> None:
            metering.prices = table
            metering.check_prices()

        files[settings.prices_file] = (lambda p: prices.load(p, settings.budget_currency), serve_prices)
    metering.reloader = TenantsReloader(files, settings.tenants_poll_s)
    return metering
