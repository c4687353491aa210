"""Proxy mode: the gateway in front of a fixed local OpenAI-compatible upstream (the peer in
``upstream_peer.py``), through real uvicorn: pass-through (streaming too), the trace continued
upstream, usage metered from the upstream's answer, failures mapped to 502/504."""

from __future__ import annotations

import httpx
import openai
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.components import free_port
from tests.serving_hooks.support import (
    assert_no_secrets,
    by_name,
    exported_text,
    point_value,
    serve,
    settle,
    spans_of,
)
from tests.serving_hooks.upstream_peer import PROMPT_TOKENS, TEXT

UPSTREAM_KEY = "sk-upstream-0123456789abcdef"
PROMPT = "proxy prompt text that must stay private"


# What the peer answers to (tests/serving_hooks/upstream_peer.py): the gateway serves only named models.
PEER_MODELS = ["up-model", "fail-500", "bad-request", "echo-401", "slow", "delay-1", "stall", "cut",
               "string-usage", "negative-usage"]


def settings_for(url: str, keyring, **extra):
    extra.setdefault("upstream_models", PEER_MODELS)
    return load(backend="upstream", upstream_url=url, upstream_timeout_s=0.5, api_keys_file=keyring.path,
                upstream_api_key=UPSTREAM_KEY, **extra)


@pytest.fixture
def proxy(memory_telemetry, upstream_peer, keyring):
    with serve(create_app(settings_for(upstream_peer.url, keyring))) as served:
        yield served


@pytest.fixture
def client(proxy, keyring):
    return openai.OpenAI(base_url=proxy.v1, api_key=keyring.acme, max_retries=0)


def test_a_completion_passes_through_and_the_trace_goes_upstream(client, upstream_peer, memory_telemetry, keyring):
    answer = client.chat.completions.create(model="up-model", messages=[{"role": "user", "content": PROMPT}])
    assert answer.id == "up-chat" and answer.choices[0].message.content == TEXT

    seen = upstream_peer.seen[-1]
    assert seen["headers"]["Authorization"] == f"Bearer {UPSTREAM_KEY}"  # ours upstream, never the caller's
    assert keyring.acme not in str(seen["headers"])
    _, trace_id, parent_id, _ = seen["headers"]["traceparent"].split("-")
    settle(memory_telemetry)

    spans = spans_of(memory_telemetry.memory.spans(), int(trace_id, 16))
    server = by_name(spans, "POST /v1/chat/completions")
    inference = by_name(spans, "chat up-model")
    assert inference.kind is SpanKind.CLIENT
    assert inference.parent.span_id == server.context.span_id
    assert int(parent_id, 16) == inference.context.span_id  # the upstream continues our CLIENT span
    assert by_name(spans, names.SPAN_AUTH_VERIFY).parent.span_id == server.context.span_id
    assert inference.attributes[names.GEN_AI_PROVIDER_NAME] == "openai"
    assert inference.attributes[names.GEN_AI_RESPONSE_ID] == "up-chat"
    assert inference.attributes[names.GEN_AI_USAGE_INPUT_TOKENS] == PROMPT_TOKENS

    metrics = memory_telemetry.memory.metrics()
    tokens = metrics[names.GATEWAY_TOKENS.name]
    assert point_value(tokens, **{names.TENANT: "acme", names.GEN_AI_TOKEN_TYPE: "input"}) == PROMPT_TOKENS
    assert point_value(tokens, **{names.TENANT: "acme", names.GEN_AI_TOKEN_TYPE: "output"}) == 4
    assert names.GEN_AI_CLIENT_OPERATION_DURATION.name in metrics


def test_streams_pass_through_and_are_metered_from_the_upstream_usage(client, upstream_peer, memory_telemetry):
    stream = client.chat.completions.create(
        model="up-model", messages=[{"role": "user", "content": PROMPT}], stream=True, max_tokens=5
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "t0t1t2t3t4"
    assert all(c.usage is None for c in chunks)  # not asked for: the usage chunk the proxy requested is dropped
    assert upstream_peer.seen[-1]["body"]["stream_options"] == {"include_usage": True}
    settle(memory_telemetry)

    with_usage = list(client.completions.create(
        model="up-model", prompt=PROMPT, stream=True, max_tokens=3, stream_options={"include_usage": True}
    ))
    assert with_usage[-1].usage.completion_tokens == 3 and with_usage[-1].usage.prompt_tokens == PROMPT_TOKENS

    settle(memory_telemetry)
    metrics = memory_telemetry.memory.metrics()
    out = point_value(metrics[names.GATEWAY_TOKENS.name], **{names.GEN_AI_TOKEN_TYPE: "output"})
    assert out == 5 + 3
    first_chunk = metrics[names.GEN_AI_CLIENT_TIME_TO_FIRST_CHUNK.name]
    assert point_value(first_chunk, **{names.GEN_AI_REQUEST_MODEL: "up-model"}) == 2
    assert point_value(metrics[names.GEN_AI_CLIENT_TIME_PER_OUTPUT_CHUNK.name]) == 2


def test_upstream_failures_become_clear_502_and_504(proxy, keyring, memory_telemetry):
    headers = {"authorization": f"Bearer {keyring.acme}"}

    def ask(model: str, **extra) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "x"}], **extra}
        return httpx.post(proxy.v1 + "/chat/completions", json=body, headers=headers, timeout=10)

    failed, slow, refused = ask("fail-500"), ask("slow"), ask("bad-request")
    assert (failed.status_code, failed.json()["error"]["code"]) == (502, "upstream_error")
    assert (slow.status_code, slow.json()["error"]["code"]) == (504, "upstream_timeout")
    assert "0.5 s" in slow.json()["error"]["message"]
    # The caller's fault: the status is kept, the body is ours (the upstream's text never passes).
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "upstream_rejected")
    assert "unsupported" not in refused.text

    stalled = ask("stall", stream=True, max_tokens=3)
    assert stalled.status_code == 200
    assert '"upstream_timeout"' in stalled.text.splitlines()[-1] or "upstream_timeout" in stalled.text

    settle(memory_telemetry)
    spans = memory_telemetry.memory.spans()
    assert by_name(spans, "chat fail-500").attributes[names.ERROR_TYPE] == "500"
    assert by_name(spans, "chat slow").status.status_code is StatusCode.ERROR
    assert by_name(spans, "chat stall").attributes[names.ERROR_TYPE] == "timeout"
    rejected = memory_telemetry.memory.metrics()[names.GATEWAY_REJECTIONS.name]
    assert point_value(rejected, **{names.REJECTION_REASON: "upstream"}) == 2


def test_an_unreachable_upstream_is_a_502_and_not_ready(memory_telemetry, keyring):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with serve(create_app(settings_for(dead, keyring))) as gw:
        answer = httpx.post(gw.v1 + "/completions", json={"model": "up-model", "prompt": "x"},
                            headers={"authorization": f"Bearer {keyring.acme}"})
        ready = httpx.get(gw.url + "/readyz")
    assert answer.status_code == 502 and answer.json()["error"]["type"] == "upstream_error"
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"


def test_nothing_secret_is_exported(client, memory_telemetry, keyring, tmp_path):
    client.chat.completions.create(model="up-model", messages=[{"role": "user", "content": PROMPT}])
    list(client.chat.completions.create(model="up-model", messages=[{"role": "user", "content": PROMPT}], stream=True))
    bad = openai.OpenAI(base_url=client.base_url, api_key=keyring.acme + "x", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    settle(memory_telemetry)
    text = exported_text(memory_telemetry)
    assert "chat up-model" in text  # the scan sees the spans
    assert_no_secrets(text, [keyring.acme, keyring.acme + "x", UPSTREAM_KEY, PROMPT])
