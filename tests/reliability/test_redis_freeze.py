"""A frozen Redis (SIGSTOP: connections are accepted by the kernel, nothing answers) must not freeze
the gateway: the limiter's client times out within ``redis_timeout_s``, the request is admitted
unchecked and counted on ``observatory.gateway.rate_limit.fail_open``; once Redis runs again the
limits apply again."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from gpt_observatory.serving_hooks.app import build_hooks, create_app
from gpt_observatory.serving_hooks.backends.base import ModelRouter
from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
from gpt_observatory.serving_hooks.inference import ModelInfo
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.components import free_port, require_binary, start_process, stop_process
from tests.serving_hooks.echo_model import EchoModel
from tests.serving_hooks.support import point_value, serve, settle

RPM = 30


@pytest.fixture
def memory_telemetry():
    from gpt_observatory import telemetry

    return telemetry.configure("observatory-freeze-test", traces_exporter=["memory"], metrics_exporter=["memory"],
                               logs_exporter=["memory"], gpu_enabled=False)


@pytest.fixture
def api_key(tmp_path) -> tuple[str, str]:
    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore

    path = tmp_path / "api-keys.json"
    key, _ = ApiKeyStore(path).create("acme", ["inference"])
    return str(path), key


@pytest.fixture
def private_redis(tmp_path) -> Iterator[tuple[str, int]]:
    """A redis-server of this test's own on a free loopback port (it will be stopped and continued)."""
    port = free_port()
    proc = start_process([require_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no"], tmp_path / "redis.log", cwd=tmp_path)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(tmp_path / 'redis.log').read_text()[-2000:]}") from None
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # a stopped process would not act on SIGTERM
        stop_process(proc)


def _timed(client: httpx.Client, body: dict) -> tuple[int, float]:
    start = time.perf_counter()
    status = client.post("/v1/completions", json=body).status_code
    return status, time.perf_counter() - start


def test_a_frozen_redis_fails_open_fast_and_counted_then_limits_apply_again(
    private_redis, memory_telemetry, api_key
):
    redis_url, pid = private_redis
    keys_file, key = api_key
    settings = load(api_keys_file=keys_file, redis_url=redis_url, requests_per_minute=RPM,
                    tokens_per_minute=10**6, rate_limit_namespace=f"freeze-{uuid.uuid4().hex}")
    assert settings.redis_timeout_s == 0.05
    backend = InProcessBackend(build_hooks(settings), "tiny-gpt", model=EchoModel(), info=ModelInfo("tiny-gpt", "1"))
    app = create_app(settings, router=ModelRouter({"champion": backend}))
    body = {"model": "tiny-gpt", "prompt": "hello", "max_tokens": 2}
    fail_open = names.RATE_LIMIT_FAIL_OPEN.name

    def failures() -> float:
        settle(memory_telemetry)
        return point_value(memory_telemetry.memory.metrics().get(fail_open, []))

    with serve(app) as gw, httpx.Client(base_url=gw.url, timeout=30,
                                        headers={"authorization": f"Bearer {key}"}) as client:
        warm = [_timed(client, body) for _ in range(3)]  # connections made, scripts loaded
        baseline = [_timed(client, body) for _ in range(10)]
        assert [s for s, _ in warm + baseline] == [200] * 13
        assert failures() == 0

        os.kill(pid, signal.SIGSTOP)
        try:
            frozen = []
            for _ in range(12):
                frozen.append(_timed(client, body))
                time.sleep(0.1)  # spread over more than one retry interval of the store (1 s)
        finally:
            os.kill(pid, signal.SIGCONT)
        during = failures()

        time.sleep(1.2)  # past the limiter's wait before it asks a failed store again
        after = [client.post("/v1/completions", json=body).status_code for _ in range(RPM + 5)]
        after_failures = failures()

    base = statistics.median(t for _, t in baseline)
    added = [t - base for _, t in frozen]
    print(f"baseline median {base * 1000:.1f} ms; frozen: added max {max(added) * 1000:.1f} ms, "
          f"median {statistics.median(added) * 1000:.1f} ms; fail-open counted {during:g}")
    assert [s for s, _ in frozen] == [200] * len(frozen)  # admitted unchecked, none blocked
    assert max(added) <= 0.1, [round(a * 1000, 1) for a in added]
    assert during == len(frozen)  # every request admitted unchecked is counted
    metrics = memory_telemetry.memory.metrics()[fail_open]
    assert point_value(metrics, **{names.RATE_LIMIT_FAILURE: "timeout"}) == len(frozen)
    # Redis answers again: the requests-per-minute limit holds (13 counted before the freeze).
    assert after_failures == during
    assert 429 in after and after.index(429) <= RPM - 13 + len(frozen), after
    assert set(after[after.index(429):]) == {429}
