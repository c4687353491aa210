"""Requests-per-minute and tokens-per-minute limits per key, on the ``limits`` library's async strategies.

Storage is in memory (one process), Redis (shared by gateway replicas; ``redis://`` URLs), or the
in-host store the worker supervisor serves (shared by the workers of one ``serve --workers N``; see
``serving_hooks._hoststore``). :func:`limiter_for` picks one from the serve settings.

How a request is held to the token budget: reserve, then settle. Before the call :meth:`RateLimiter.admit`
charges the request's *worst case* (the prompt estimate plus ``n x max_tokens``: what it may use at
most) to the key's minute, on a fixed-window counter; a request whose worst case does not fit what
is left is refused (429, ``Retry-After`` until the window resets) and its charge given back. A
request whose worst case is larger than the whole budget could never fit: it is refused at once
with a 429 that says so (:attr:`Refusal.budget` is set, no ``Retry-After``: waiting does not help,
a smaller ``max_tokens`` or ``n`` does). After the call, whatever its outcome, :meth:`RateLimiter.settle`
gives back what the request did not use (or charges what it used beyond its reservation, when a
model reports more than the estimate). So concurrent requests can never together overdraw the
budget by more than the estimate error of the prompt, and no request by more than its own declared
bound. A reservation that outlives its window is settled without going below zero: the give-back
then lands in the new window, at most one request's reservation.

Storage failures and timeouts (the Redis client has connect and socket timeouts of ``timeout_s``
and does not retry; each call to the host store is bounded by ``timeout_s``) fail open: the request is admitted unchecked, counted on
``observatory.gateway.rate_limit.fail_open`` by ``observatory.rate_limit.failure`` (``timeout`` or
``error``), and logged at most once a minute. After a failure the store is left alone for
``retry_after_failure_s``: requests in that time are admitted (and counted) without waiting on it,
so a frozen Redis costs one timeout per interval, not one per request. A rate-limit outage should
not become a serving outage.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from limits import RateLimitItemPerMinute
from limits.aio.strategies import STRATEGIES, FixedWindowRateLimiter
from limits.storage import storage_from_string
from loguru import logger

from gpt_observatory.serving_hooks import _hoststore
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.summed import SummedCounter

if TYPE_CHECKING:
    from gpt_observatory.serving_hooks.settings import ServeSettings

__all__ = ["RateLimiter", "Refusal", "Reservation", "limiter_for", "storage_uri"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused: ``kind`` in ``names.RATE_LIMIT_KINDS`` and seconds to wait.

    ``budget`` is set (the key's tokens per minute) when the request's worst case is larger than
    the whole budget: no wait helps, and ``retry_after`` is 0.
    """

    kind: str
    retry_after: int
    budget: int | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """An admitted request: the tokens held for it on ``key``'s minute (0: none, e.g. the store failed)."""

    key: str
    tokens: int = 0


def storage_uri(redis_url: str | None) -> str:
    """The ``limits`` async storage URI for ``redis_url`` (``None``: in memory)."""
    if not redis_url:
        return "async+memory://"
    return redis_url if redis_url.startswith("async+") else f"async+{redis_url}"


class RateLimiter:
    """Per-key limits: ``requests_per_minute`` and ``tokens_per_minute`` (either may be ``None``), kept in
    Redis at ``redis_url``, in the ``limits`` storage ``store`` names (a URI) or else in memory."""

    def __init__(
        self,
        *,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        redis_url: str | None = None,
        store: str | None = None,
        strategy: str = "fixed-window",
        namespace: str = "observatory",
        timeout_s: float = 0.05,
        retry_after_failure_s: float = 1.0,
    ) -> None:
        uri = store or storage_uri(redis_url)
        options: dict = {}
        if uri.startswith(_hoststore.SCHEME):
            options = {"timeout_s": timeout_s}
        elif "redis" in uri:
            # Passed to redis.asyncio.Redis.from_url. redis-py retries a timed-out command 3 times
            # with up to seconds of backoff by default: retry=None makes one attempt, bounded by timeout_s.
            options = {
                "key_prefix": namespace, "implementation": "redispy", "socket_timeout": timeout_s,
                "socket_connect_timeout": timeout_s, "retry": None,
            }
        self._storage = storage_from_string(uri, **options)
        rpm, tpm = requests_per_minute, tokens_per_minute
        self._rpm = RateLimitItemPerMinute(rpm, namespace=f"{namespace}-rpm") if rpm else None
        self._tpm = RateLimitItemPerMinute(tpm, namespace=f"{namespace}-tpm") if tpm else None
        self._requests = STRATEGIES[strategy](self._storage)
        # Token charges must be able to go past the limit and come back (reserve, settle): a fixed-window counter does.
        self._tokens = FixedWindowRateLimiter(self._storage)
        self._retry_after_failure_s = retry_after_failure_s
        self._skip_until = 0.0  # monotonic time before which the store is not asked (it just failed)
        self._last_failure = "error"
        self._last_warning = 0.0
        self._fail_open = SummedCounter.of(__name__, names.RATE_LIMIT_FAIL_OPEN)

    @property
    def enabled(self) -> bool:
        return self._rpm is not None or self._tpm is not None

    @property
    def tokens_per_minute(self) -> int | None:
        return self._tpm.amount if self._tpm is not None else None

    async def admit(self, key: str, worst_tokens: int = 0) -> Refusal | Reservation:
        """Count one request for ``key`` and reserve its ``worst_tokens``; a :class:`Reservation` to
        :meth:`settle` when admitted, else a :class:`Refusal` saying why and for how long."""
        tpm = self._tpm
        cost = max(1, worst_tokens)
        if tpm is not None and cost > tpm.amount:
            return Refusal("tokens", 0, tpm.amount)
        if time.monotonic() < self._skip_until:
            self._fail_open.add(1, {names.RATE_LIMIT_FAILURE: self._last_failure})
            return Reservation(key)
        reserved = 0
        try:
            # Tokens first: a refusal there gives its charge back and does not use up a request.
            if tpm is not None:
                if not await self._tokens.hit(tpm, key, cost=cost):
                    await self._give_back(tpm, key, cost)
                    return Refusal("tokens", await self._retry_after(self._tokens, tpm, key))
                reserved = cost
            if self._rpm is not None and not await self._requests.hit(self._rpm, key):
                if reserved:
                    await self._give_back(tpm, key, reserved)
                return Refusal("requests", await self._retry_after(self._requests, self._rpm, key))
        except Exception as e:  # storage outage or timeout: fail open
            self._fail_open.add(1, {names.RATE_LIMIT_FAILURE: self._failed(e)})
        return Reservation(key, reserved)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Turn ``reservation`` into the tokens the request really used (input + output)."""
        tpm = self._tpm
        difference = max(0, used_tokens) - reservation.tokens
        if tpm is None or difference == 0 or time.monotonic() < self._skip_until:
            return
        try:
            if difference > 0:
                await self._tokens.hit(tpm, reservation.key, cost=difference)
            else:
                await self._give_back(tpm, reservation.key, -difference)
        except Exception as e:
            self._failed(e)

    async def remaining(self, key: str) -> tuple[int | None, int | None]:
        """What is left of ``key``'s requests and tokens this minute (``None`` where unlimited)."""
        rpm = (await self._requests.get_window_stats(self._rpm, key)).remaining if self._rpm else None
        tpm = (await self._tokens.get_window_stats(self._tpm, key)).remaining if self._tpm else None
        return rpm, tpm

    async def close(self) -> None:
        client = getattr(getattr(self._storage, "bridge", None), "storage", self._storage)
        aclose = getattr(client, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                pass

    async def _give_back(self, item: RateLimitItemPerMinute, key: str, tokens: int) -> None:
        """Lower ``key``'s token count by ``tokens``, never below zero (the window may have reset since)."""
        left = await self._storage.incr(item.key_for(key), item.get_expiry(), amount=-tokens)
        if left < 0:
            await self._storage.incr(item.key_for(key), item.get_expiry(), amount=-left)

    async def _retry_after(self, strategy, item, key: str) -> int:
        try:
            stats = await strategy.get_window_stats(item, key)
            return max(1, math.ceil(stats.reset_time - time.time()))
        except Exception:
            return 60

    def _failed(self, error: Exception) -> str:
        """Note a storage failure: leave the store alone for a while, warn at most once a minute; the cause."""
        cause = "timeout" if _is_timeout(error) else "error"
        now = time.monotonic()
        self._last_failure = cause
        self._skip_until = now + self._retry_after_failure_s
        if now - self._last_warning > 60:
            self._last_warning = now
            logger.warning(
                "rate-limit storage failed ({}: {}); admitting requests unchecked",
                cause, type(error).__name__,
            )
        return cause


def limiter_for(settings: ServeSettings, host_store: Path | None = None) -> RateLimiter | None:
    """The limiter ``settings`` describe (``None``: no limit set), on the store ``settings.limiter_store``
    names; ``host_store`` is the host store's socket (``serve --workers N`` passes the supervisor's)."""
    if not (settings.requests_per_minute or settings.tokens_per_minute):
        return None
    store = None
    if settings.limiter_store == "host":  # in one process, its own memory is the whole host's state
        store = storage_uri(None) if host_store is None else _hoststore.uri(host_store)
    return RateLimiter(
        requests_per_minute=settings.requests_per_minute, tokens_per_minute=settings.tokens_per_minute,
        redis_url=settings.redis_url, store=store, strategy=settings.rate_limit_strategy,
        namespace=settings.rate_limit_namespace, timeout_s=settings.redis_timeout_s,
    )


def _is_timeout(error: BaseException) -> bool:
    """Whether ``error`` is a timeout (redis-py's ``TimeoutError`` is not the builtin one), by class name
    so that no storage client is imported here."""
    return isinstance(error, TimeoutError) or any("Timeout" in c.__name__ for c in type(error).__mro__)
