"""A replica pool behind the real gateway (uvicorn on loopback), replicas the real test upstream:
retries to another replica before the first byte, ejection, the 503 when none can take a request,
and the fleet telemetry (attempt spans, retry events, per-replica metrics)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from opentelemetry.trace import SpanKind, StatusCode

from gpt_observatory.serving_hooks.app import create_app, served_models
from gpt_observatory.serving_hooks.backends._health import DEFAULT_RTT_S
from gpt_observatory.serving_hooks.backends.base import ModelBackend, ModelRouter
from gpt_observatory.serving_hooks.backends.pool import PoolPolicy, ReplicaPool, ReplicaSpec
from gpt_observatory.serving_hooks.inference import GenAIHooks
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.components import free_port
from tests.serving_hooks.support import assert_no_secrets, exported_text, point_value, serve, settle, spans_of
from tests.serving_hooks.upstream_peer import UpstreamPeer

MODELS = ["up-model", "fail-500", "cut", "bad-request"]
REPLICA_KEY = "sk-replica-0123456789abcdef"


@contextlib.contextmanager
def pool_gateway(keyring, replicas: list[ReplicaSpec], wrap: Callable[[ReplicaPool], ModelBackend] | None = None,
                 outer: Callable[[Any], Any] | None = None, **policy) -> Iterator[tuple[httpx.Client, ReplicaPool]]:
    """The real gateway in front of a pool of ``replicas`` (``wrap``: a backend around the pool
    instead; ``outer``: an ASGI app around the gateway's)."""
    settings = load(backend="upstream", upstream_url=replicas[0].url, upstream_models=MODELS,
                    api_keys_file=keyring.path, upstream_timeout_s=2.0)
    hooks = GenAIHooks("client", models=served_models(settings))
    pool = ReplicaPool(hooks, "up-model", replicas, PoolPolicy(**{"probe_interval_s": 0, **policy}),
                       connect_timeout_s=1.0, timeout_s=2.0)
    auth = {"authorization": f"Bearer {keyring.acme}"}
    app = create_app(settings, router=ModelRouter({"champion": pool if wrap is None else wrap(pool)}))
    with (serve(app if outer is None else outer(app)) as served,
          httpx.Client(base_url=served.v1, headers=auth, timeout=10) as client):
        yield client, pool


def ask(client: httpx.Client, model: str = "up-model", **extra) -> httpx.Response:
    return client.post("/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}],
                                                  "max_tokens": 2, **extra})


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused


def test_a_refused_connection_is_retried_on_another_replica_and_ejects_the_dead_one(memory_telemetry, keyring):
    with UpstreamPeer() as live:
        replicas = [ReplicaSpec(dead_url(), "dead"), ReplicaSpec(live.url, "live", api_key=REPLICA_KEY)]
        # least_outstanding: latency_weighted (the default) would stop sending to the dead replica once the
        # live one answers faster per token, before the dead one reached its consecutive errors
        with pool_gateway(keyring, replicas, balancer="least_outstanding", consecutive_errors=2,
                          max_ejected_share=0.5) as (client, pool):
            answers = [ask(client, stream=i % 2 == 1) for i in range(16)]
            assert [a.status_code for a in answers] == [200] * 16
            assert dict((r.name, s) for r, s in pool.states()) == {"dead": "ejected", "live": "healthy"}
            states = memory_telemetry.memory.metrics()[names.FLEET_REPLICA_STATE.name]  # read while serving
            dead = {names.FLEET_REPLICA: "dead", names.FLEET_POOL: "up-model"}
            assert point_value(states, **dead, **{names.FLEET_STATE: "ejected"}) == 1
            assert point_value(states, **dead, **{names.FLEET_STATE: "healthy"}) == 0
            assert point_value(states, **{names.FLEET_REPLICA: "live", names.FLEET_STATE: "healthy"}) == 1
        settle(memory_telemetry)
        metrics = memory_telemetry.memory.metrics()
        attempts = metrics[names.FLEET_REPLICA_REQUESTS.name]
        dead = {names.FLEET_REPLICA: "dead", names.FLEET_POOL: "up-model"}
        assert point_value(attempts, **dead, **{names.FLEET_OUTCOME: "connect_error"}) == 2  # then ejected
        assert point_value(attempts, **{names.FLEET_REPLICA: "live", names.FLEET_OUTCOME: "ok"}) == 16
        assert point_value(metrics[names.FLEET_RETRIES.name], **{names.FLEET_OUTCOME: "connect_error"}) == 2
        assert point_value(metrics[names.FLEET_REPLICA_EJECTIONS.name], **dead) == 1
        assert point_value(metrics[names.FLEET_REPLICA_OUTSTANDING.name], **dead) == 0
        assert point_value(metrics[names.FLEET_REPLICA_OUTSTANDING.name], **{names.FLEET_REPLICA: "live"}) == 0

        # The trace of a retried request: the GenAI span, two CLIENT attempts under it, the retry event.
        spans = memory_telemetry.memory.spans()
        retried = [s for s in spans if s.name == "chat up-model" and s.events]
        assert retried, "no GenAI span carries a retry event"
        genai = retried[0]
        assert genai.status.status_code is not StatusCode.ERROR
        event = genai.events[0]
        assert event.name == names.EVENT_FLEET_RETRY and event.attributes[names.FLEET_REPLICA] == "dead"
        tries = sorted((s for s in spans_of(spans, genai.context.trace_id) if s.name == names.SPAN_FLEET_ATTEMPT),
                       key=lambda s: s.start_time)
        assert [(s.kind, s.parent.span_id) for s in tries] == [(SpanKind.CLIENT, genai.context.span_id)] * 2
        assert [s.attributes[names.FLEET_REPLICA] for s in tries] == ["dead", "live"]
        assert tries[0].attributes[names.SERVER_PORT] == int(replicas[0].url.split(":")[2].split("/")[0])
        assert tries[1].attributes[names.SERVER_PORT] == live.port
        assert tries[1].attributes[names.HTTP_REQUEST_RESEND_COUNT] == 1
        assert tries[0].status.status_code is StatusCode.ERROR
        ejected = [e for s in spans for e in s.events if e.name == names.EVENT_FLEET_EJECTED]
        assert [(e.attributes[names.FLEET_REPLICA], e.attributes[names.FLEET_EJECTION_SECONDS]) for e in ejected] == [
            ("dead", PoolPolicy().base_ejection_s)]
        # The replica continues the trace of its own attempt span, and gets its own key.
        _, _, parent_id, _ = live.seen[-1]["headers"]["traceparent"].split("-")
        assert {int(parent_id, 16)} <= {s.context.span_id for s in spans if s.name == names.SPAN_FLEET_ATTEMPT}
        assert live.seen[-1]["headers"]["Authorization"] == f"Bearer {REPLICA_KEY}"
        assert_no_secrets(exported_text(memory_telemetry), [REPLICA_KEY, keyring.acme])


def test_a_500_is_not_retried_and_a_4xx_is_not_held_against_the_replica(memory_telemetry, keyring):
    with UpstreamPeer() as a, UpstreamPeer() as b:
        replicas = [ReplicaSpec(a.url, "a"), ReplicaSpec(b.url, "b")]
        with pool_gateway(keyring, replicas, consecutive_errors=50) as (client, _):
            failed = ask(client, "fail-500")
            assert (failed.status_code, failed.json()["error"]["code"]) == (502, "upstream_error")
            assert ask(client, "bad-request").status_code == 400
            cut = ask(client, "cut", stream=True)  # the answer began: its failure is the caller's
            assert cut.status_code == 200 and "upstream_error" in cut.text
        settle(memory_telemetry)
        metrics = memory_telemetry.memory.metrics()
        attempts = metrics[names.FLEET_REPLICA_REQUESTS.name]
        assert [point_value(attempts, **{names.FLEET_OUTCOME: o}) for o in ("server_error", "client_error",
                                                                            "answer_failed")] == [1, 1, 1]
        assert names.FLEET_RETRIES.name not in metrics or point_value(metrics[names.FLEET_RETRIES.name]) == 0
        assert len(a.seen) + len(b.seen) == 3
        assert point_value(metrics[names.FLEET_REPLICA_OUTSTANDING.name]) == 0


def test_a_spent_retry_budget_leaves_the_failure_to_the_caller(memory_telemetry, keyring):
    with UpstreamPeer() as live:
        replicas = [ReplicaSpec(dead_url(), "dead"), ReplicaSpec(live.url, "live")]
        policy = {"balancer": "round_robin", "retry_ratio": 0.0, "retry_min": 0, "consecutive_errors": 50}
        with pool_gateway(keyring, replicas, **policy) as (client, _):
            answers = [ask(client).status_code for _ in range(4)]
    assert sorted(answers) == [200, 200, 502, 502]  # round robin: every other one to the dead replica
    settle(memory_telemetry)
    denied = memory_telemetry.memory.metrics()[names.FLEET_RETRIES_DENIED.name]
    assert point_value(denied, **{names.FLEET_POOL: "up-model"}) == 2


def test_no_replica_able_to_take_a_request_is_a_503_in_openai_shape(memory_telemetry, keyring):
    replicas = [ReplicaSpec(dead_url(), "x"), ReplicaSpec(dead_url(), "y")]
    with pool_gateway(keyring, replicas, consecutive_errors=1, max_ejected_share=1.0) as (client, pool):
        first = ask(client)  # both refuse: each ejected on its first failure, then none is left
        assert first.status_code == 503 and first.json()["error"]["code"] == "no_healthy_replica"
        assert not pool.has_healthy()
        again = ask(client)
        assert again.status_code == 503 and again.headers["retry-after"] == "1"
        assert set(again.json()["error"]) >= {"message", "type", "code"}
    settle(memory_telemetry)
    unavailable = memory_telemetry.memory.metrics()[names.FLEET_UNAVAILABLE.name]
    assert point_value(unavailable, **{names.FLEET_POOL: "up-model"}) == 2


def test_readiness_shows_each_replica_without_its_credentials(memory_telemetry, keyring):
    with UpstreamPeer() as live:
        secret_url = live.url.replace("http://", "http://user:hunter2-secret@")
        replicas = [ReplicaSpec(secret_url, "live"), ReplicaSpec(dead_url(), "dead")]
        with pool_gateway(keyring, replicas, probe_interval_s=0.05, unhealthy_threshold=1) as (client, pool):
            deadline = time.monotonic() + 5
            while dict((r.name, s) for r, s in pool.states())["dead"] != "unhealthy":
                assert time.monotonic() < deadline, "the probes did not mark the dead replica"
                time.sleep(0.05)
            ready = client.get(str(client.base_url).removesuffix("/v1/") + "/readyz")
            assert ask(client).status_code == 200
    body = ready.text
    assert "hunter2-secret" not in body
    info = ready.json()
    assert "dead" in body and "unhealthy" in body, info
    assert_no_secrets(exported_text(memory_telemetry), ["hunter2-secret"])


def test_latency_weighted_times_answers_per_output_token_streams_included(memory_telemetry, keyring):
    """The default balancer's estimate (shown in /readyz) is the time of an answer over its output
    tokens: a replica's long answers do not make it look slow, streams count, a 4xx says nothing of
    its speed and a failure never makes it look faster."""
    with (UpstreamPeer(delay_s=0.2) as replica,  # 0.2 s per answer, whatever its length
          pool_gateway(keyring, [ReplicaSpec(replica.url, "a")]) as (client, pool)):
        assert pool.policy.balancer == "latency_weighted"
        ready = str(client.base_url).removesuffix("/v1/") + "/readyz"

        def estimate() -> float:
            return client.get(ready).json()["model"]["replicas"]["a"]["s_per_token"]

        start = estimate()
        assert start == DEFAULT_RTT_S  # not measured yet
        assert ask(client, max_tokens=40).status_code == 200  # usage.completion_tokens = 40
        once = estimate()
        # 0.2 s over 40 tokens (up to 0.6 s on a busy box); whole-answer timing read (0.03 + 0.2) / 2
        assert (start + 0.2 / 40) / 2 <= once < (start + 0.6 / 40) / 2
        streamed = ask(client, max_tokens=40, stream=True)
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("[DONE]")
        twice = estimate()
        assert (once + 0.2 / 40) / 2 <= twice < (once + 0.6 / 40) / 2
        assert ask(client, "bad-request").status_code == 400
        assert estimate() == twice  # a refusal: no sample
        assert ask(client, "fail-500").status_code == 502  # 0.2 s for no token: slower than the estimate
        assert estimate() > twice
