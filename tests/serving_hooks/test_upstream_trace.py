"""One trace from the gateway into the upstream: an upstream that is itself instrumented with the
OpenTelemetry SDK (as vLLM is with ``--otlp-traces-endpoint``) continues the gateway's trace. Its
SERVER span is the child of the gateway's GenAI CLIENT span, streamed or not.

The upstream is a plain ASGI app, hand-instrumented (``opentelemetry-instrumentation-asgi`` is not
installed): it extracts ``traceparent`` with the global propagator, as any OTel-instrumented server
does, and records its SERVER span in a tracer provider of its own (its own ``service.name``) that
exports to the same in-memory backend as the gateway.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from opentelemetry import propagate
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.gateway import read_body
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.serving_hooks.support import by_name, serve, settle, spans_of

MODEL = "traced-model"
UPSTREAM_SERVICE = "instrumented-upstream"
PROMPT_TOKENS = 5


class InstrumentedUpstream:
    """An OpenAI-compatible ASGI app whose every request is a SERVER span continuing the caller's trace."""

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer("tests.instrumented_upstream")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        parent = propagate.extract(carrier)  # the global propagator: W3C trace context and baggage
        route = scope["path"]
        with self.tracer.start_as_current_span(f"{scope['method']} {route}", context=parent, kind=SpanKind.SERVER,
                                               attributes={names.HTTP_ROUTE: route}):
            body = await read_body(receive)
            if scope["method"] == "GET":
                await _json(send, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "t"}]})
                return
            request = json.loads(body)
            n = int(request.get("max_tokens") or 3)
            usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n, "total_tokens": PROMPT_TOKENS + n}
            if not request.get("stream"):
                await _json(send, {"id": "tr-chat", "object": "chat.completion", "created": 0, "model": MODEL,
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                                "finish_reason": "length"}], "usage": usage})
                return
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for i in range(n):
                chunk = {"id": "tr-chat", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                         "choices": [{"index": 0, "delta": {"content": f"t{i}"},
                                      "finish_reason": "length" if i == n - 1 else None}]}
                await send({"type": "http.response.body", "body": b"data: " + json.dumps(chunk).encode() + b"\n\n",
                            "more_body": True})
            final = {"id": "tr-chat", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                     "choices": [], "usage": usage}
            await send({"type": "http.response.body",
                        "body": b"data: " + json.dumps(final).encode() + b"\n\ndata: [DONE]\n\n"})


async def _json(send: Any, payload: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


@pytest.fixture
def upstream(memory_telemetry) -> Iterator[tuple[str, TracerProvider]]:
    provider = TracerProvider(resource=Resource.create({names.SERVICE_NAME: UPSTREAM_SERVICE}))
    provider.add_span_processor(SimpleSpanProcessor(memory_telemetry.memory.span_exporter))
    with serve(InstrumentedUpstream(provider)) as served:
        yield served.v1, provider
    provider.shutdown()


@pytest.fixture
def client(memory_telemetry, upstream, keyring) -> Iterator[openai.OpenAI]:
    settings = load(backend="upstream", upstream_url=upstream[0], upstream_models=[MODEL],
                    api_keys_file=keyring.path)
    with serve(create_app(settings)) as gateway:
        yield openai.OpenAI(base_url=gateway.v1, api_key=keyring.acme, max_retries=0)


def _upstream_span(memory_telemetry: Any) -> Any:
    """The upstream's SERVER span of the last call (it ends just after its last byte went out)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [s for s in memory_telemetry.memory.spans()
                 if s.resource.attributes.get(names.SERVICE_NAME) == UPSTREAM_SERVICE and s.name.startswith("POST ")]
        if found:
            return found[-1]
        time.sleep(0.01)
    raise AssertionError("the upstream recorded no SERVER span")


@pytest.mark.parametrize("stream", [False, True], ids=["non-streamed", "streamed"])
def test_the_upstream_server_span_is_a_child_of_the_gateway_client_span(client, memory_telemetry, stream):
    messages = [{"role": "user", "content": "hello"}]
    if stream:
        chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True, max_tokens=4))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "t0t1t2t3"
    else:
        answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
        assert answer.choices[0].message.content == "ok"
    settle(memory_telemetry)
    upstream = _upstream_span(memory_telemetry)

    spans = spans_of(memory_telemetry.memory.spans(), upstream.context.trace_id)
    gateway = [s for s in spans if s.resource.attributes.get(names.SERVICE_NAME) != UPSTREAM_SERVICE]
    inference = by_name(gateway, f"chat {MODEL}")
    server = by_name(gateway, "POST /v1/chat/completions")
    assert upstream.kind is SpanKind.SERVER and inference.kind is SpanKind.CLIENT
    assert upstream.context.trace_id == inference.context.trace_id == server.context.trace_id
    assert upstream.parent is not None and upstream.parent.is_remote
    assert upstream.parent.span_id == inference.context.span_id  # the upstream continues our CLIENT span
    assert inference.parent.span_id == server.context.span_id
    assert inference.start_time <= upstream.start_time  # (their ends race: the two run on separate loops)
