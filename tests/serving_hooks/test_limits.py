"""Limits that hold against any single request: bounds on ``n``, ``best_of``, ``max_tokens`` and the
model's context (400s naming the setting), the tokens-per-minute budget reserved for each request's
worst case and settled to its real use (in memory and in Redis), and model names held to the served
catalog (404, and never a metric label)."""

from __future__ import annotations

import asyncio
import math
import random
import re
import string
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
import redis
from aiohttp import web

from gpt_observatory.serving_hooks.app import build_hooks, create_app
from gpt_observatory.serving_hooks.backends.base import ModelRouter
from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
from gpt_observatory.serving_hooks.inference import ModelInfo
from gpt_observatory.serving_hooks.ratelimit import RateLimiter
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.serving_hooks.echo_model import EchoModel
from tests.serving_hooks.support import point_value, serve, settle

PROMPT = "0123456789abcdefghij"  # 20 bytes: 5 tokens to the upstream estimate (4 bytes a token)


class CountingPeer:
    """A local OpenAI-compatible upstream that uses everything a request allows: ``n`` completions of
    ``max_tokens`` tokens each (usage says so), after ``delay_s`` so that concurrent requests overlap."""

    def __init__(self, delay_s: float = 0.05) -> None:
        self.delay_s = delay_s
        self.calls = 0
        self.models_seen: set[str] = set()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _complete(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.calls += 1
        self.models_seen.add(body.get("model"))
        await asyncio.sleep(self.delay_s)
        n, max_tokens = body.get("n") or 1, body.get("max_tokens") or 16
        choices = [{"index": i, "message": {"role": "assistant", "content": "x" * max_tokens},
                    "finish_reason": "length"} for i in range(n)]
        usage = {"prompt_tokens": 5, "completion_tokens": n * max_tokens, "total_tokens": 5 + n * max_tokens}
        return web.json_response({"id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                                  "model": body.get("model"), "choices": choices, "usage": usage})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "n-model", "object": "model"}]})

    def __enter__(self) -> CountingPeer:
        ready = threading.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_get("/v1/models", self._models)

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
            self._loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="counting-peer", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the counting peer did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def counting_peer():
    with CountingPeer() as peer:
        yield peer


def _echo_app(settings) -> tuple[Any, EchoModel]:
    model = EchoModel()
    backend = InProcessBackend(build_hooks(settings), "tiny-gpt", model=model, info=ModelInfo("tiny-gpt", "1"))
    return create_app(settings, router=ModelRouter({"champion": backend})), model


def test_a_request_above_a_bound_is_a_400_naming_the_bound_and_its_setting(memory_telemetry, keyring):
    settings = load(api_keys_file=keyring.path, context_tokens=64, max_tokens_limit=100)
    app, _ = _echo_app(settings)
    headers = {"authorization": f"Bearer {keyring.acme}"}
    chat = {"model": "tiny-gpt", "messages": [{"role": "user", "content": "hi"}]}
    cases = [
        ("/chat/completions", {**chat, "n": 1000}, "n must be at most 8 (OBSERVATORY_SERVE_MAX_N)"),
        ("/completions", {"model": "tiny-gpt", "prompt": "hi", "best_of": 9},
         "best_of must be at most 8 (OBSERVATORY_SERVE_MAX_BEST_OF)"),
        ("/chat/completions", {**chat, "max_tokens": 101},
         "max_tokens must be at most 100 (OBSERVATORY_SERVE_MAX_TOKENS_LIMIT)"),
        ("/chat/completions", {**chat, "max_completion_tokens": 5000},
         "max_completion_tokens must be at most 100 (OBSERVATORY_SERVE_MAX_TOKENS_LIMIT)"),
        # 2 bytes of prompt + 4 x 16 = 66 > 64
        ("/chat/completions", {**chat, "n": 4, "max_tokens": 16}, "context of 64 tokens (OBSERVATORY_SERVE_CONTEXT_TOKENS)"),
        ("/completions", {"model": "tiny-gpt", "prompt": "x" * 65}, "context of 64 tokens"),
    ]
    with serve(app) as gw:
        answers = [httpx.post(gw.v1 + path, json=body, headers=headers) for path, body, _ in cases]
        # Fields are validated before any is read: a wrong type is the usual 400, never a 500.
        typed = [httpx.post(gw.v1 + "/chat/completions", json=body, headers=headers) for body in (
            {**chat, "n": "many"}, {**chat, "n": 0}, {**chat, "best_of": 1.5}, {**chat, "messages": 5},
            {"model": 5, "messages": chat["messages"]},
        )]
        fits = httpx.post(gw.v1 + "/chat/completions", json={**chat, "n": 2, "max_tokens": 16}, headers=headers)
    for answer, (_, _, message) in zip(answers, cases, strict=True):
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["type"] == "invalid_request_error"
        assert message in answer.json()["error"]["message"]
    assert [a.status_code for a in typed] == [400] * len(typed)
    assert {a.json()["error"]["code"] for a in typed} == {"invalid_request"}
    assert fits.status_code == 200
    settle(memory_telemetry)
    rejected = memory_telemetry.memory.metrics()[names.GATEWAY_REJECTIONS.name]
    assert point_value(rejected, **{names.REJECTION_REASON: "bad_request"}) == len(cases) + len(typed)


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_n_1000_cannot_overdraw_the_token_budget(store, request, memory_telemetry, keyring, counting_peer):
    """The issue's attack: ``n=1000`` overdrew a 1,000-token budget 1,365x. Now it is a 400 (the bound);
    with ``max_n`` raised a concurrent burst of large-``n`` requests, each really using all it asked
    for, leaves the tenant's charged total within one request's declared bound of the budget."""
    redis_url = request.getfixturevalue("redis_url") if store == "redis" else None
    namespace = f"t-{uuid.uuid4().hex}"
    budget, n, max_tokens = 2000, 32, 10
    bound = math.ceil(len(PROMPT) / 4) + n * max_tokens  # one request's declared worst case: 325
    headers = {"authorization": f"Bearer {keyring.acme}"}
    body = {"model": "n-model", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens}

    def settings(**extra):
        # A loaded event loop can keep a 50 ms Redis read waiting past its timeout (fail open): this test
        # is about the accounting, so it gives the store a second (a frozen store: tests/reliability).
        return load(backend="upstream", upstream_url=counting_peer.url, model="n-model", api_keys_file=keyring.path,
                    tokens_per_minute=budget, redis_url=redis_url, rate_limit_namespace=namespace,
                    redis_timeout_s=1.0, **extra)

    with serve(create_app(settings())) as gw:
        refused = httpx.post(gw.v1 + "/chat/completions", json={**body, "n": 1000}, headers=headers)
    assert refused.status_code == 400 and "n must be at most 8" in refused.json()["error"]["message"]
    assert counting_peer.calls == 0  # refused before the upstream saw it

    with serve(create_app(settings(max_n=128))) as gw:
        too_big = httpx.post(gw.v1 + "/chat/completions", json={**body, "n": 128, "max_tokens": 20}, headers=headers)

        def call(_: int) -> int:
            return httpx.post(gw.v1 + "/chat/completions", json={**body, "n": n}, headers=headers, timeout=30).status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(call, range(48)))
        settle(memory_telemetry)
    # 5 + 128 x 20 = 2565 tokens at most: more than the whole budget, so no wait would help
    assert too_big.status_code == 429 and "budget is 2000" in too_big.json()["error"]["message"]
    assert "retry-after" not in too_big.headers
    served = statuses.count(200)
    assert statuses.count(429) == len(statuses) - served
    assert served == counting_peer.calls and served >= budget // bound - 1  # the budget was used, not refused
    tokens = memory_telemetry.memory.metrics()[names.GATEWAY_TOKENS.name]
    charged = point_value(tokens, **{names.TENANT: "acme"})
    print(f"{store}: {served} of {len(statuses)} served, {charged:g} tokens charged; budget {budget}, bound {bound}")
    assert charged == served * (5 + n * max_tokens)  # every served request used all it declared
    assert charged <= budget + bound, (charged, budget, bound)
    assert names.RATE_LIMIT_FAIL_OPEN.name not in memory_telemetry.memory.metrics()  # every request was checked
    if redis_url:  # what the shared store holds agrees
        async def left() -> int | None:
            limiter = RateLimiter(tokens_per_minute=budget, redis_url=redis_url, namespace=namespace)
            try:
                return (await limiter.remaining("acme"))[1]
            finally:
                await limiter.close()

        assert asyncio.run(left()) == max(0, budget - charged)
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{namespace}*"):
            client.delete(key)


def _series(scrape: str) -> list[str]:
    return [line for line in scrape.splitlines() if line and not line.startswith("#")]


def test_model_names_outside_the_catalog_are_404s_and_never_labels(memory_telemetry, keyring, upstream_peer):
    """1,000 random model names against a served app: each a 404 before any backend or scope lookup,
    and ``/metrics`` keeps the same series (its size moves only with the digits of the counts)."""
    from gpt_observatory import telemetry

    handle = telemetry.configure(
        "observatory-gateway-tests", traces_exporter=["memory"], metrics_exporter=["memory", "prometheus"],
        logs_exporter=["memory"], prometheus_serve=False, gpu_enabled=False,
    )
    settings = load(backend="upstream", upstream_url=upstream_peer.url, model="up-model", api_keys_file=keyring.path)
    headers = {"authorization": f"Bearer {keyring.acme}"}
    rng = random.Random(15)
    names_sent: list[str] = []

    def unknown(count: int, client: httpx.Client) -> list[httpx.Response]:
        answers = []
        for i in range(count):
            model = "".join(rng.choices(string.ascii_letters + string.digits + "-._:/", k=rng.randint(4, 48)))
            names_sent.append(model)
            if i % 2:
                answers.append(client.post("/v1/completions", json={"model": model, "prompt": "hi"}, headers=headers))
            else:
                answers.append(client.post("/v1/chat/completions", headers=headers,
                                           json={"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        return answers

    seen_before = len(upstream_peer.seen)
    with serve(create_app(settings)) as gw, httpx.Client(base_url=gw.url) as client:
        ok = client.post("/v1/chat/completions", headers=headers,
                         json={"model": "up-model", "messages": [{"role": "user", "content": "hi"}]})
        first = unknown(20, client)
        settle(handle)
        before = client.get("/metrics").text
        rest = unknown(1000, client)
        anonymous = client.post("/v1/completions", json={"model": "no-such-model", "prompt": "hi"})
        settle(handle)
        after = client.get("/metrics").text
    assert ok.status_code == 200
    for answer in (*first, *rest):
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "model_not_found"
    assert anonymous.status_code == 404  # refused before authentication asks which scopes the model needs
    assert len(upstream_peer.seen) == seen_before + 1  # only the served model reached the upstream
    before_series, after_series = _series(before), _series(after)
    print(f"/metrics: {len(before)} bytes, {len(before_series)} series after 20 unknown models; "
          f"{len(after)} bytes, {len(after_series)} series after 1,020")
    assert [re.sub(r" \S+$", "", s) for s in after_series] == [re.sub(r" \S+$", "", s) for s in before_series]
    assert len(after) <= len(before) * 1.02
    leaked = [m for m in names_sent if f'"{m}"' in after]
    assert not leaked, leaked[:5]
    rejected = handle.memory.metrics()[names.GATEWAY_REJECTIONS.name]
    assert point_value(rejected, **{names.REJECTION_REASON: "not_found"}) == 1021
