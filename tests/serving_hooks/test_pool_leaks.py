"""A pool's stream whose response is never sent, or never iterated, still gives its replica back:
the caller leaves after the upstream took the request and before the first byte, or a layer
between the backend and the server drops the response. Real gateway (uvicorn on loopback), real
replicas (the test upstream); the replica's outstanding count must return to 0 and the GenAI span
must end in each case."""

from __future__ import annotations

import socket
import time
from typing import Any

import orjson
from opentelemetry.trace import StatusCode

from gpt_observatory.serving_hooks.backends.base import Call, ModelBackend, Readiness
from gpt_observatory.serving_hooks.backends.pool import ReplicaPool, ReplicaSpec
from gpt_observatory.telemetry import names
from tests.serving_hooks.support import point_value, settle
from tests.serving_hooks.test_pool import ask, pool_gateway
from tests.serving_hooks.upstream_peer import UpstreamPeer

GENAI = "chat up-model"


def outstanding(telemetry: Any) -> float:
    return point_value(telemetry.memory.metrics().get(names.FLEET_REPLICA_OUTSTANDING.name, []))


def wait_for(check: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def genai_spans(telemetry: Any) -> list[Any]:
    return [s for s in telemetry.memory.spans() if s.name == GENAI]


def test_a_caller_that_leaves_before_the_stream_began_gives_the_replica_back(memory_telemetry, keyring):
    with UpstreamPeer(delay_s=0.4) as replica:
        with pool_gateway(keyring, [ReplicaSpec(replica.url, "a"), ReplicaSpec(replica.url, "b")]) as (client, _):
            body = orjson.dumps({"model": "up-model", "messages": [{"role": "user", "content": "hi"}],
                                 "max_tokens": 2, "stream": True})
            head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    f"authorization: Bearer {keyring.acme}\r\ncontent-length: {len(body)}\r\n\r\n").encode()
            with socket.create_connection((client.base_url.host, client.base_url.port)) as sock:
                sock.sendall(head + body)
                wait_for(lambda: len(replica.seen) == 1, "the request did not reach the replica")
                assert outstanding(memory_telemetry) == 1
            # The caller is gone; the replica answers its headers 0.4 s after the request came.
            wait_for(lambda: outstanding(memory_telemetry) == 0, "the replica's outstanding count stayed up")
            wait_for(lambda: len(genai_spans(memory_telemetry)) == 1, "the GenAI span was never ended")
            assert ask(client, stream=True).status_code == 200  # and the pool serves on
        settle(memory_telemetry)
    left, served = sorted(genai_spans(memory_telemetry), key=lambda s: s.start_time)
    assert left.status.status_code is not StatusCode.ERROR  # a caller that leaves is not an error of ours
    assert served.status.status_code is not StatusCode.ERROR
    attempts = memory_telemetry.memory.metrics()[names.FLEET_REPLICA_REQUESTS.name]
    assert point_value(attempts) == 2
    assert point_value(attempts, **{names.FLEET_OUTCOME: "answer_failed"}) == 0  # not held against the replica
    assert outstanding(memory_telemetry) == 0


def gone_on_send(app: Any) -> Any:
    """An ASGI 2.4 server whose caller left before the answer began: the first send raises ``OSError``
    (uvicorn's ``ClientDisconnected``), so the stream's body is never iterated."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": "2.4"}}

        async def leaving(message: Any) -> None:
            if message["type"] == "http.response.start" and scope["path"] == "/v1/chat/completions":
                raise OSError("the client left")
            await send(message)

        await app(scope, receive, leaving)

    return wrapped


def test_a_stream_whose_first_send_fails_gives_the_replica_back_and_ends_its_span(memory_telemetry, keyring):
    with (UpstreamPeer() as replica,
          pool_gateway(keyring, [ReplicaSpec(replica.url, "a")], outer=gone_on_send) as (client, _)):
        ask(client, stream=True)  # the server answers 500 for the app that raised
        wait_for(lambda: outstanding(memory_telemetry) == 0, "the replica's outstanding count stayed up")
        wait_for(lambda: len(genai_spans(memory_telemetry)) == 1, "the GenAI span was never ended")
    (span,) = genai_spans(memory_telemetry)
    assert span.status.status_code is not StatusCode.ERROR  # the caller left: not an error of ours
    attempts = memory_telemetry.memory.metrics()[names.FLEET_REPLICA_REQUESTS.name]
    assert point_value(attempts, **{names.FLEET_OUTCOME: "cancelled"}) == 1  # not held against the replica


class DropsTheResponse(ModelBackend):
    """A layer between the pool and the server that fails after the pool answered (its response is never sent)."""

    def __init__(self, pool: ReplicaPool) -> None:
        self.pool = pool

    async def start(self) -> None:
        await self.pool.start()

    async def close(self) -> None:
        await self.pool.close()

    async def readiness(self) -> Readiness:
        return await self.pool.readiness()

    async def models(self) -> list[dict[str, Any]]:
        return await self.pool.models()

    async def handle(self, call: Call) -> Any:
        await self.pool.handle(call)
        raise RuntimeError("lost the response")


def test_a_stream_response_dropped_unsent_gives_the_replica_back_and_ends_its_span(memory_telemetry, keyring):
    with UpstreamPeer() as replica:
        with pool_gateway(keyring, [ReplicaSpec(replica.url, "a")], wrap=DropsTheResponse) as (client, _):
            assert ask(client, stream=True).status_code == 500
            wait_for(lambda: outstanding(memory_telemetry) == 0, "the replica's outstanding count stayed up")
            wait_for(lambda: len(genai_spans(memory_telemetry)) == 1, "the GenAI span was never ended")
        settle(memory_telemetry)
    (span,) = genai_spans(memory_telemetry)
    assert span.status.status_code is StatusCode.ERROR  # the answer never went out
    assert span.attributes[names.ERROR_TYPE] == "stream_not_sent"
    attempts = memory_telemetry.memory.metrics()[names.FLEET_REPLICA_REQUESTS.name]
    assert point_value(attempts, **{names.FLEET_OUTCOME: "cancelled"}) == 1
