"""Where budget spend lives: Redis (two Lua scripts, atomic across every client) or a ``limits`` async
storage (this process's memory, or the ``serve --workers`` supervisor's host store, which serves storage
calls only: there a reservation is an atomic ``incr`` given back when it went past the limit).

Keys are ``<namespace>:budget:<tenant>:<period start>`` (see :class:`serving_hooks.budgets.Metering`).
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["BudgetStore", "LimitsBudgetStore", "RedisBudgetStore"]


class BudgetStore(Protocol):
    """Where spend per tenant and period lives."""

    async def reserve(self, key: str, amount: int, limit: int, ttl_s: int) -> tuple[bool, int]:
        """Add ``amount`` to ``key`` if the result stays within ``limit``: (admitted, spend after)."""

    async def adjust(self, key: str, delta: int, ttl_s: int) -> int:
        """Add ``delta`` (negative: give back) to ``key``, never below 0; the spend after."""

    async def spent(self, key: str) -> int: ...

    async def close(self) -> None: ...


_RESERVE = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
if spent + amount > tonumber(ARGV[2]) then return {0, spent} end
spent = redis.call('INCRBY', KEYS[1], amount)
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return {1, spent}
"""
_ADJUST = """
local spent = redis.call('INCRBY', KEYS[1], ARGV[1])
if spent < 0 then redis.call('SET', KEYS[1], 0, 'KEEPTTL') spent = 0 end
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return spent
"""


class RedisBudgetStore:
    """Spend in Redis: reserve and adjust are one Lua script each (atomic across every client)."""

    def __init__(self, url: str, timeout_s: float = 0.05) -> None:
        import redis.asyncio as aioredis

        # One attempt per call, bounded by timeout_s (redis-py retries timeouts with backoff by default).
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                              retry=None)
        self._reserve = self._redis.register_script(_RESERVE)
        self._adjust = self._redis.register_script(_ADJUST)

    async def reserve(self, key: str, amount: int, limit: int, ttl_s: int) -> tuple[bool, int]:
        ok, spent = await self._reserve(keys=[key], args=[amount, limit, ttl_s])
        return bool(ok), int(spent)

    async def adjust(self, key: str, delta: int, ttl_s: int) -> int:
        return int(await self._adjust(keys=[key], args=[delta, ttl_s]))

    async def spent(self, key: str) -> int:
        return int(await self._redis.get(key) or 0)

    async def close(self) -> None:
        await self._redis.aclose()


class LimitsBudgetStore:
    """Spend in a ``limits`` async storage (memory, or the host store): an atomic ``incr``, given back
    when it went past the limit (see the module docstring)."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage

    async def reserve(self, key: str, amount: int, limit: int, ttl_s: int) -> tuple[bool, int]:
        spent = await self._storage.incr(key, ttl_s, amount=amount)
        if spent > limit:
            await self.adjust(key, -amount, ttl_s)
            return False, spent - amount
        return True, spent

    async def adjust(self, key: str, delta: int, ttl_s: int) -> int:
        spent = await self._storage.incr(key, ttl_s, amount=delta)
        if spent < 0:
            spent = await self._storage.incr(key, ttl_s, amount=-spent)
        return int(spent)

    async def spent(self, key: str) -> int:
        return int(await self._storage.get(key))

    async def close(self) -> None:
        aclose = getattr(self._storage, "aclose", None)
        if aclose is not None:
            await aclose()
