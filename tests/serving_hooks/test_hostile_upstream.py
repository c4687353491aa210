"""An upstream that misbehaves or leaks: its bodies never reach the caller, its credentials never
show, bad counts are an upstream error (502 or an SSE error event, never a 500), a cut stream is an
error everywhere, and the caller's baggage and tracestate stay at the gateway."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.trace import StatusCode

from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.telemetry import names
from tests.serving_hooks.support import by_name, point_value, serve, settle
from tests.serving_hooks.test_proxy import UPSTREAM_KEY, settings_for


@pytest.fixture
def ask(memory_telemetry, upstream_peer, keyring):
    with serve(create_app(settings_for(upstream_peer.url, keyring))) as gw:
        def post(model: str, **extra) -> httpx.Response:
            body = {"model": model, "messages": [{"role": "user", "content": "x"}], **extra}
            headers = {"authorization": f"Bearer {keyring.acme}", **extra.pop("headers", {})}
            return httpx.post(gw.v1 + "/chat/completions", json=body, headers=headers, timeout=10)
        yield post


def test_an_upstream_that_echoes_our_key_in_a_4xx_hands_the_caller_only_our_error(ask):
    answer = ask("echo-401")
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "upstream_unauthorized"
    assert UPSTREAM_KEY not in answer.text and "Bearer" not in answer.text
    assert answer.headers["content-type"] == "application/json"


@pytest.mark.parametrize("model", ["string-usage", "negative-usage"])
def test_usage_that_is_not_a_count_is_a_502_and_charges_nothing(ask, memory_telemetry, model):
    answer = ask(model)
    streamed = ask(model, stream=True, stream_options={"include_usage": True}, max_tokens=3)
    assert answer.status_code == 502 and "malformed" in answer.json()["error"]["message"]
    assert streamed.status_code == 200 and '"upstream_error"' in streamed.text.strip().splitlines()[-1]
    settle(memory_telemetry)
    tokens = memory_telemetry.memory.metrics().get(names.GATEWAY_TOKENS.name)
    assert tokens is None or all(p.value >= 0 for p in tokens)


def test_a_stream_cut_before_done_is_an_error_on_the_span_the_metrics_and_to_the_caller(ask, memory_telemetry):
    cut = ask("cut", stream=True, max_tokens=5)
    assert cut.status_code == 200  # the status went out with the first chunk
    events = [line for line in cut.text.splitlines() if line.startswith("data:")]
    assert len(events) == 6 and "upstream_error" in events[-1]  # 5 chunks, then our error event
    settle(memory_telemetry)
    server = by_name(memory_telemetry.memory.spans(), "POST /v1/chat/completions")
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes[names.ERROR_TYPE] == "stream_truncated"
    metrics = memory_telemetry.memory.metrics()
    duration = metrics[names.HTTP_SERVER_REQUEST_DURATION.name]
    cut_points = [p for p in duration if p.attributes.get(names.ERROR_TYPE) == "stream_truncated"]
    assert len(cut_points) == 1 and cut_points[0].attributes[names.HTTP_RESPONSE_STATUS_CODE] == 200
    requests = metrics[names.GATEWAY_REQUESTS.name]
    assert point_value(requests, **{names.TENANT: "acme", names.ERROR_TYPE: "stream_truncated"}) == 1


def test_caller_baggage_and_tracestate_are_not_forwarded(ask, upstream_peer):
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers = {"traceparent": traceparent, "tracestate": "vendor=secret-state", "baggage": "user=secret-baggage"}
    assert ask("up-model", headers=headers).status_code == 200
    sent = {k.lower(): v for k, v in upstream_peer.seen[-1]["headers"].items()}
    assert sent["traceparent"].split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "tracestate" not in sent and "baggage" not in sent


def test_an_upstream_url_with_a_password_never_shows_it(memory_telemetry, upstream_peer, keyring):
    url = upstream_peer.url.replace("http://", "http://user:hunter2-password@")
    settings = settings_for(url, keyring).model_copy(update={"upstream_api_key": None})
    with serve(create_app(settings)) as gw:
        ready = httpx.get(gw.url + "/readyz")
        answer = httpx.post(gw.v1 + "/chat/completions", headers={"authorization": f"Bearer {keyring.acme}"},
                            json={"model": "fail-500", "messages": [{"role": "user", "content": "x"}]})
    assert ready.status_code == 200 and "hunter2" not in ready.text and "127.0.0.1" in ready.text
    assert answer.status_code == 502 and "hunter2" not in answer.text
    sent = {k.lower(): v for k, v in upstream_peer.seen[-1]["headers"].items()}
    assert sent["authorization"].startswith("Basic ")  # the URL's credentials still authenticate us
