"""Rate limits: requests and tokens per minute per tenant, in memory and shared through Redis by
gateway replicas; the token budget is charged each request's worst case before the call and settled
to the tokens really used after."""

from __future__ import annotations

import asyncio
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from gpt_observatory.serving_hooks.app import build_hooks, create_app
from gpt_observatory.serving_hooks.backends.base import ModelRouter
from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
from gpt_observatory.serving_hooks.inference import ModelInfo
from gpt_observatory.serving_hooks.ratelimit import RateLimiter, Refusal, Reservation
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.components import free_port, start_process, stop_process, wait_http
from tests.serving_hooks.echo_model import EchoModel
from tests.serving_hooks.support import assert_no_secrets, point_value, serve, settle

REPO = Path(__file__).resolve().parents[2]


def test_requests_per_minute_refuse_with_the_time_to_wait():
    async def scenario():
        limiter = RateLimiter(requests_per_minute=3, namespace=f"t-{uuid.uuid4().hex}")
        verdicts = [await limiter.admit("acme") for _ in range(4)]
        other = await limiter.admit("globex")
        return verdicts, other

    verdicts, other = asyncio.run(scenario())
    assert all(isinstance(v, Reservation) for v in verdicts[:3])
    assert isinstance(verdicts[3], Refusal)
    assert verdicts[3].kind == "requests" and 1 <= verdicts[3].retry_after <= 60
    assert isinstance(other, Reservation)  # keys are separate budgets


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_tokens_are_reserved_for_the_worst_case_and_settled_to_the_real_use(store, request):
    redis_url = request.getfixturevalue("redis_url") if store == "redis" else None

    async def scenario():
        limiter = RateLimiter(tokens_per_minute=100, redis_url=redis_url, namespace=f"t-{uuid.uuid4().hex}")
        left = []
        first = await limiter.admit("acme", worst_tokens=60)  # prompt + n x max_tokens: held before the call
        left.append((await limiter.remaining("acme"))[1])
        refused = await limiter.admit("acme", worst_tokens=41)  # 60 + 41 > 100: refused, nothing kept
        left.append((await limiter.remaining("acme"))[1])
        await limiter.settle(first, 25)  # really used 25: 35 given back
        left.append((await limiter.remaining("acme"))[1])
        second = await limiter.admit("acme", worst_tokens=75)  # fits now: 25 + 75
        await limiter.settle(second, 80)  # a model that used more than estimated is charged it
        left.append((await limiter.remaining("acme"))[1])
        too_big = await limiter.admit("globex", worst_tokens=101)  # could never fit a minute
        left.append((await limiter.remaining("globex"))[1])
        await limiter.close()
        return first, refused, second, too_big, left

    first, refused, second, too_big, left = asyncio.run(scenario())
    assert first == Reservation("acme", 60) and second == Reservation("acme", 75)
    assert isinstance(refused, Refusal) and refused.kind == "tokens" and 1 <= refused.retry_after <= 60
    assert refused.budget is None
    assert too_big == Refusal("tokens", 0, 100)  # said at once, no wait to suggest
    assert left == [40, 40, 75, 0, 100]


def test_a_storage_outage_admits_and_counts_the_failure(memory_telemetry):
    dead = f"redis://127.0.0.1:{free_port()}/0"

    async def scenario():
        limiter = RateLimiter(requests_per_minute=1, tokens_per_minute=10, redis_url=dead)
        verdicts = [await limiter.admit("acme", 5) for _ in range(3)]
        await limiter.settle(verdicts[0], 5)  # the store is still down: nothing raised
        return verdicts

    assert asyncio.run(scenario()) == [Reservation("acme", 0)] * 3  # admitted, nothing held
    points = memory_telemetry.memory.metrics()[names.RATE_LIMIT_FAIL_OPEN.name]
    assert point_value(points, **{names.RATE_LIMIT_FAILURE: "error"}) == 3
    assert point_value(points, **{names.RATE_LIMIT_FAILURE: "timeout"}) == 0


def test_tokens_per_minute_hold_each_request_to_its_worst_case_and_count_the_real_tokens(memory_telemetry, keyring):
    # completions of 10 prompt bytes + max_tokens 10 = 20 tokens at most, and echo uses all 20; budget 50 a minute
    settings = load(api_keys_file=keyring.path, tokens_per_minute=50, rate_limit_namespace=f"t-{uuid.uuid4().hex}")
    backend = InProcessBackend(build_hooks(settings), "tiny-gpt", model=EchoModel(), info=ModelInfo("tiny-gpt", "1"))
    app = create_app(settings, router=ModelRouter({"champion": backend}))
    headers = {"authorization": f"Bearer {keyring.acme}"}
    body = {"model": "tiny-gpt", "prompt": "0123456789", "max_tokens": 10}
    small = {"model": "tiny-gpt", "prompt": "012", "max_tokens": 5}  # 8 at most: fits the 10 left
    with serve(app) as gw:
        answers = [httpx.post(gw.v1 + "/completions", json=b, headers=headers) for b in (body, body, body, small)]
        other_key_same_tenant = httpx.post(gw.v1 + "/completions", json=body,
                                           headers={"authorization": f"Bearer {keyring.acme2}"})
    # 20 + 20 used; the third could use 20 of the 10 left: refused before the call (it used to overdraw to 60)
    assert [a.status_code for a in answers] == [200, 200, 429, 200]
    assert [a.json()["usage"]["total_tokens"] for a in (answers[0], answers[1], answers[3])] == [20, 20, 8]
    refused = answers[2]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert other_key_same_tenant.status_code == 429  # limits are per tenant by default

    settle(memory_telemetry)
    metrics = memory_telemetry.memory.metrics()
    tokens = metrics[names.GATEWAY_TOKENS.name]
    assert point_value(tokens, **{names.TENANT: "acme", names.GEN_AI_TOKEN_TYPE: "input"}) == 23
    assert point_value(tokens, **{names.TENANT: "acme", names.GEN_AI_TOKEN_TYPE: "output"}) == 25
    rejected = metrics[names.GATEWAY_REJECTIONS.name]
    assert point_value(rejected, **{names.REJECTION_REASON: "rate_limit", names.RATE_LIMIT_KIND: "tokens"}) == 2


@pytest.fixture
def replicas(tmp_path, redis_url, keyring, upstream_peer):
    """Two ``observatory serve`` processes (upstream backend) sharing rate-limit state in Redis: 20 rpm."""
    namespace = f"obs-test-{uuid.uuid4().hex}"
    procs: list = []
    urls: list[str] = []
    env = {"PYTHONPATH": str(REPO), "OBSERVATORY_SERVE_RATE_LIMIT_NAMESPACE": namespace,
           "OBSERVATORY_STATE_DIR": str(tmp_path / "state")}
    try:
        for i in range(2):
            port = free_port()
            log = tmp_path / f"gateway-{i}.log"
            procs.append(start_process([
                sys.executable, "-m", "gpt_observatory.commands.serve", "--backend", "upstream",
                "--upstream-url", upstream_peer.url, "--model", "up-model", "--port", str(port), "--api-keys-file", str(keyring.path),
                "--redis-url", redis_url, "--rpm", "20", "--no-metrics-endpoint",
            ], log, env=env, cwd=tmp_path))
            urls.append(f"http://127.0.0.1:{port}")
        for url, proc, i in zip(urls, procs, range(2), strict=True):
            wait_http(url + "/healthz", timeout=60, proc=proc, log=tmp_path / f"gateway-{i}.log")
        yield urls, namespace, lambda: [stop_process(p) for p in procs], tmp_path / "state"
    finally:
        for proc in procs:
            stop_process(proc)
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{namespace}*"):
            client.delete(key)


def test_replicas_sharing_redis_admit_no_more_than_the_limit(replicas, keyring, redis_url):
    urls, namespace, stop, state = replicas
    headers = {"authorization": f"Bearer {keyring.acme}"}
    body = {"model": "up-model", "messages": [{"role": "user", "content": "hi"}]}

    def call(i: int) -> httpx.Response:
        return httpx.post(urls[i % 2] + "/v1/chat/completions", json=body, headers=headers, timeout=30)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(call, range(60)))
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 20, statuses
    assert statuses.count(429) == 40
    assert {a.status_code for a in answers[::2]} == {200, 429} or {a.status_code for a in answers[1::2]} == {200, 429}
    assert all(a.headers.get("retry-after") for a in answers if a.status_code == 429)
    assert any(key.startswith(namespace.encode()) for key in redis.Redis.from_url(redis_url).scan_iter(f"{namespace}*"))
    stop()  # SIGTERM: both flush their telemetry
    exported = "\n".join(p.read_text() for p in (state / "telemetry").glob("*.jsonl"))
    assert "POST /v1/chat/completions" in exported
    assert_no_secrets(exported, [keyring.acme])
