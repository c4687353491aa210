"""Requests-per-minute and tokens-per-minute limits per key, on the ``limits`` library's async strategies.

Storage is in memory (one process) or Redis (shared by gateway replicas; ``redis://`` URLs).

How a request is admitted against the token budget: before the call, the request must fit its
estimated prompt tokens into what is left of the key's minute (``test``, which charges nothing);
after the call, the *actual* input + output tokens are charged (``hit`` with that cost on a fixed
window, which counts past the limit). A request that overdraws the budget is served, and the key is
refused until the window resets. Concurrent requests that pass the check together can overdraw by
at most their own sizes; nothing is ever charged on an estimate.

Storage failures on the request path fail open (the request is admitted) and are logged at most
once a minute: a rate-limit outage should not become a serving outage.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.aio.strategies import STRATEGIES, FixedWindowRateLimiter
from limits.storage import storage_from_string
from loguru import logger


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused: ``kind`` in ``names.RATE_LIMIT_KINDS`` and seconds to wait."""

    kind: str
    retry_after: int


def storage_uri(redis_url: str | None) -> str:
    """The ``limits`` async storage URI for ``redis_url`` (``None``: in memory)."""
    if not redis_url:
        return "async+memory://"
    return redis_url if redis_url.startswith("async+") else f"async+{redis_url}"


class RateLimiter:
    """Per-key limits: ``requests_per_minute`` and ``tokens_per_minute`` (either may be ``None``)."""

    def __init__(
        self,
        *,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        redis_url: str | None = None,
        strategy: str = "fixed-window",
        namespace: str = "observatory",
        timeout_s: float = 0.05,
    ) -> None:
        uri = storage_uri(redis_url)
        options: dict = {"key_prefix": namespace} if "redis" in uri else {}
        if "redis" in uri:
            options["implementation"] = "redispy"
        self._storage = storage_from_string(uri, **options)
        rpm, tpm = requests_per_minute, tokens_per_minute
        self._rpm = RateLimitItemPerMinute(rpm, namespace=f"{namespace}-rpm") if rpm else None
        self._tpm = RateLimitItemPerMinute(tpm, namespace=f"{namespace}-tpm") if tpm else None
        self._requests = STRATEGIES[strategy](self._storage)
        # Token charges must be able to go past the limit (charge actual after): a fixed-window counter does.
        self._tokens = FixedWindowRateLimiter(self._storage)
        self._last_warning = 0.0

    @property
    def enabled(self) -> bool:
        return self._rpm is not None or self._tpm is not None

    async def admit(self, key: str, estimated_tokens: int = 0) -> Refusal | None:
        """Count one request for ``key``; ``None`` when admitted, else why not and for how long."""
        try:
            # Tokens first: that check charges nothing, so a refusal there does not use up a request.
            if self._tpm is not None:
                cost = max(1, min(estimated_tokens, self._tpm.amount))
                if not await self._tokens.test(self._tpm, key, cost=cost):
                    return Refusal("tokens", await self._retry_after(self._tokens, self._tpm, key))
            if self._rpm is not None and not await self._requests.hit(self._rpm, key):
                return Refusal("requests", await self._retry_after(self._requests, self._rpm, key))
        except Exception as e:  # storage outage: fail open
            self._warn(e)
        return None

    async def charge(self, key: str, tokens: int) -> None:
        """Charge the tokens a request really used (input + output) to ``key``'s minute."""
        if self._tpm is None or tokens <= 0:
            return
        try:
            await self._tokens.hit(self._tpm, key, cost=tokens)
        except Exception as e:
            self._warn(e)

    async def remaining(self, key: str) -> tuple[int | None, int | None]:
        """What is left of ``key``'s requests and tokens this minute (``None`` where unlimited)."""
        rpm = (await self._requests.get_window_stats(self._rpm, key)).remaining if self._rpm else None
        tpm = (await self._tokens.get_window_stats(self._tpm, key)).remaining if self._tpm else None
        return rpm, tpm

    async def close(self) -> None:
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        aclose = getattr(client, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                pass

    async def _retry_after(self, strategy, item, key: str) -> int:
        try:
            stats = await strategy.get_window_stats(item, key)
            return max(1, math.ceil(stats.reset_time - time.time()))
        except Exception:
            return 60

    def _warn(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning > 60:
            self._last_warning = now
            logger.warning("rate-limit storage failed ({}); admitting requests until it recovers", type(error).__name__)
