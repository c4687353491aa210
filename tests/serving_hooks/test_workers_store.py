"""The in-host rate-limit store (serving_hooks._hoststore): a ``limits`` storage served over a unix
socket, that holds every strategy's counts as the memory storage does and fails open like Redis."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from gpt_observatory.serving_hooks import _hoststore
from gpt_observatory.serving_hooks.ratelimit import RateLimiter, Refusal, Reservation, limiter_for
from gpt_observatory.serving_hooks.settings import ServeSettings
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.settings import ConfigError
from tests.serving_hooks.support import point_value


@contextlib.asynccontextmanager
async def host_store(folder: Path):
    server = await _hoststore.serve(folder / "store.sock")
    try:
        yield _hoststore.uri(folder / "store.sock")
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
def test_limiters_on_one_host_store_share_one_count(tmp_path, strategy):
    async def scenario():
        async with host_store(tmp_path) as uri:
            # Two limiters, two connections: as two workers would be.
            first, second = (RateLimiter(requests_per_minute=5, store=uri, strategy=strategy, timeout_s=1)
                             for _ in range(2))
            verdicts = await asyncio.gather(*(limiter.admit("acme") for limiter in [first, second] * 6))
            other = await second.admit("globex")
            left = await first.remaining("acme")
            for limiter in (first, second):
                await limiter.close()
            return verdicts, other, left

    verdicts, other, left = asyncio.run(scenario())
    assert sum(isinstance(v, Reservation) for v in verdicts) == 5
    refused = [v for v in verdicts if isinstance(v, Refusal)]
    assert len(refused) == 7 and all(v.kind == "requests" and 1 <= v.retry_after <= 60 for v in refused)
    assert isinstance(other, Reservation)  # keys are separate budgets
    assert left == (0, None)


def test_tokens_are_reserved_and_settled_on_the_host_store(tmp_path):
    async def scenario():
        async with host_store(tmp_path) as uri:
            limiter = RateLimiter(tokens_per_minute=100, store=uri, timeout_s=1)
            first = await limiter.admit("acme", worst_tokens=60)
            refused = await limiter.admit("acme", worst_tokens=41)
            await limiter.settle(first, 25)
            left = (await limiter.remaining("acme"))[1]
            await limiter.close()
            return first, refused, left

    first, refused, left = asyncio.run(scenario())
    assert first == Reservation("acme", 60)
    assert isinstance(refused, Refusal) and refused.kind == "tokens"
    assert left == 75


def test_no_host_store_admits_and_counts_the_failure(memory_telemetry, tmp_path):
    async def scenario():
        limiter = RateLimiter(requests_per_minute=1, store=_hoststore.uri(tmp_path / "absent.sock"))
        return [await limiter.admit("acme") for _ in range(3)]

    assert asyncio.run(scenario()) == [Reservation("acme", 0)] * 3
    points = memory_telemetry.memory.metrics()[names.RATE_LIMIT_FAIL_OPEN.name]
    assert point_value(points, **{names.RATE_LIMIT_FAILURE: "error"}) == 3


def test_a_host_store_that_does_not_answer_costs_one_timeout_then_is_left_alone(memory_telemetry, tmp_path):
    async def scenario():
        async def mute(reader, writer):  # reads what it is asked and never answers
            await reader.read()

        server = await asyncio.start_unix_server(mute, path=str(tmp_path / "mute.sock"))
        limiter = RateLimiter(requests_per_minute=1, store=_hoststore.uri(tmp_path / "mute.sock"), timeout_s=0.05,
                              retry_after_failure_s=30)
        loop = asyncio.get_running_loop()
        start = loop.time()
        verdicts = [await limiter.admit("acme") for _ in range(5)]
        elapsed = loop.time() - start
        await limiter.close()
        server.close()
        return verdicts, elapsed

    verdicts, elapsed = asyncio.run(scenario())
    assert verdicts == [Reservation("acme", 0)] * 5
    assert elapsed < 0.5  # one timeout of 0.05 s, then admitted without asking
    points = memory_telemetry.memory.metrics()[names.RATE_LIMIT_FAIL_OPEN.name]
    assert point_value(points, **{names.RATE_LIMIT_FAILURE: "timeout"}) == 5


def test_the_host_store_is_the_default_with_several_workers_and_no_redis(tmp_path):
    assert ServeSettings(workers=1).limiter_store == "memory"
    assert ServeSettings(workers=2).limiter_store == "host"
    assert ServeSettings(workers=2, rate_limit_store="memory").limiter_store == "memory"
    assert ServeSettings(workers=2, redis_url="redis://127.0.0.1:6379/0").limiter_store == "redis"
    with pytest.raises((ConfigError, ValueError), match="rate_limit_store 'host' conflicts with redis_url"):
        ServeSettings(workers=2, redis_url="redis://127.0.0.1:6379/0", rate_limit_store="host")
    assert limiter_for(ServeSettings(workers=2)) is None  # no limit set: no limiter at all
