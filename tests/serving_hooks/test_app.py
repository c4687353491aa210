"""The reference app through real uvicorn: the official OpenAI client (streaming and not), one
trace per request from the caller's traceparent through auth to the model, the operational
endpoints, graceful shutdown of ``observatory serve``, and nothing secret in what is exported."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from opentelemetry.trace import SpanKind

from gpt_observatory.serving_hooks.app import build_hooks, create_app
from gpt_observatory.serving_hooks.auth import Authenticator, AuthSettings
from gpt_observatory.serving_hooks.backends.base import ModelRouter
from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
from gpt_observatory.serving_hooks.inference import ModelInfo
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.components import free_port, start_process, stop_process, wait_http
from tests.serving_hooks.conftest import AUDIENCE
from tests.serving_hooks.echo_model import EchoModel
from tests.serving_hooks.support import assert_no_secrets, by_name, exported_text, serve, settle, spans_of

REPO = Path(__file__).resolve().parents[2]
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
PROMPT = "tell nobody: the vault opens at midnight"


def make_app(settings, idp, keyring):
    auth = Authenticator(AuthSettings(
        issuer=idp.issuer, audience=AUDIENCE, api_keys_file=keyring.path, model_scopes={"*": ("inference",)}
    ))
    backend = InProcessBackend(
        build_hooks(settings), "tiny-gpt", model=EchoModel(), info=ModelInfo("tiny-gpt", "3", "champion", "champion")
    )
    return create_app(settings, router=ModelRouter({"champion": backend}), authenticator=auth)


@pytest.fixture
def gateway(memory_telemetry, dev_idp, keyring):
    with serve(make_app(load(), dev_idp, keyring)) as served:
        yield served


@pytest.fixture
def token(dev_idp):
    return dev_idp.mint("alice@example.com", tenant="acme", scopes=["inference"])


def test_the_openai_client_works_streaming_and_not(gateway, keyring):
    client = openai.OpenAI(base_url=gateway.v1, api_key=keyring.acme, max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny-gpt"]

    chat = client.chat.completions.create(model="tiny-gpt", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert chat.choices[0].message.content == "abcde" and chat.choices[0].finish_reason == "length"
    assert chat.usage.completion_tokens == 5 and chat.usage.prompt_tokens == len("user: hi\nassistant:")

    stream = client.chat.completions.create(
        model="tiny-gpt", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "abcd"
    assert chunks[-1].usage.completion_tokens == 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"

    text = client.completions.create(model="tiny-gpt", prompt="0123", max_tokens=3)
    assert text.choices[0].text == "abc" and text.usage.prompt_tokens == 4
    streamed = list(client.completions.create(model="tiny-gpt", prompt="0123", max_tokens=3, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == "abc"
    assert all(c.usage is None for c in streamed)


def test_one_trace_per_request_from_the_caller_through_auth_to_the_model(gateway, token, memory_telemetry):
    client = openai.OpenAI(base_url=gateway.v1, api_key=token, max_retries=0)
    for stream in (False, True):
        traceparent = f"00-{TRACE_ID[:-1]}{int(stream)}-{PARENT_ID}-01"
        answer = client.chat.completions.create(
            model="tiny-gpt", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=stream,
            extra_headers={"traceparent": traceparent},
        )
        if stream:
            list(answer)
        settle(memory_telemetry)
        spans = spans_of(memory_telemetry.memory.spans(), int(traceparent.split("-")[1], 16))
        assert sorted(s.name for s in spans) == ["POST /v1/chat/completions", "auth.verify", "chat tiny-gpt"]
        server = by_name(spans, "POST /v1/chat/completions")
        assert server.kind is SpanKind.SERVER and server.parent.span_id == int(PARENT_ID, 16)
        verify = by_name(spans, names.SPAN_AUTH_VERIFY)
        inference = by_name(spans, "chat tiny-gpt")
        assert verify.parent.span_id == server.context.span_id
        assert inference.parent.span_id == server.context.span_id
        assert verify.attributes[names.AUTH_METHOD] == "jwt" and verify.attributes[names.AUTH_OUTCOME] == "ok"
        assert server.attributes[names.TENANT] == "acme"
        assert inference.attributes[names.MODEL_VERSION] == "3"
        assert inference.attributes[names.GEN_AI_REQUEST_STREAM] is stream
        assert inference.attributes[names.GEN_AI_USAGE_OUTPUT_TOKENS] == 3
        assert server.end_time >= inference.end_time  # the gateway span covers the whole stream


def test_refusals_name_the_problem(gateway, keyring, dev_idp):
    def ask(key: str, model: str = "tiny-gpt") -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        return httpx.post(gateway.v1 + "/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})

    expired = dev_idp.mint("bob", tenant="acme", scopes=["inference"], ttl=-600)
    assert ask(expired).json()["error"]["code"] == "expired"
    assert ask(keyring.globex).status_code == 403
    unknown = ask(keyring.acme, model="gpt-17")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    invalid = httpx.post(gateway.v1 + "/completions", json={"model": "tiny-gpt", "prompt": "x", "max_tokens": -1},
                         headers={"authorization": f"Bearer {keyring.acme}"})
    assert invalid.status_code == 400 and "max_tokens" in invalid.json()["error"]["message"]
    assert invalid.json()["error"]["message"].startswith("invalid request: max_tokens: ")
    wrong_method = httpx.get(gateway.v1 + "/chat/completions", headers={"authorization": f"Bearer {keyring.acme}"})
    assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "POST")
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_without_the_gateway_the_app_reads_validates_and_answers_itself(keyring):
    """``instrument=False`` (no gateway in front): the completion endpoint reads and parses the body."""
    settings = load(allow_anonymous=True)
    backend = InProcessBackend(build_hooks(settings), "tiny-gpt", model=EchoModel(), info=ModelInfo("tiny-gpt", "3"))
    app = create_app(settings, router=ModelRouter({"champion": backend}), authenticator=None, instrument=False)
    with serve(app) as gw:
        ok = httpx.post(gw.v1 + "/completions", json={"model": "tiny-gpt", "prompt": "hello", "max_tokens": 3})
        broken = httpx.post(gw.v1 + "/completions", content=b'{"model": ', headers={"content-type": "application/json"})
        invalid = httpx.post(gw.v1 + "/chat/completions", json={"model": "tiny-gpt", "messages": []})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
    assert (broken.status_code, broken.json()["error"]["code"]) == (400, "invalid_json")
    assert (invalid.status_code, invalid.json()["error"]["code"]) == (400, "invalid_request")
    assert invalid.json()["error"]["message"].startswith("invalid request: messages: ")


def test_health_readiness_and_metrics(memory_telemetry, dev_idp, keyring):
    from gpt_observatory import telemetry
    handle = telemetry.configure(
        "observatory-gateway-tests", traces_exporter=["memory"], metrics_exporter=["memory", "prometheus"],
        logs_exporter=["memory"], prometheus_serve=False, gpu_enabled=False,
    )
    with serve(make_app(load(), dev_idp, keyring)) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key=keyring.acme, max_retries=0)
        list(client.chat.completions.create(model="tiny-gpt", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=4, stream=True))
        health = httpx.get(gw.url + "/healthz")
        ready = httpx.get(gw.url + "/readyz")
        settle(handle)
        scrape = httpx.get(gw.url + "/metrics")
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json()["model"] == {"name": "tiny-gpt", "version": "3", "alias": "champion", "role": "champion"}
    assert scrape.headers["content-type"].startswith("text/plain")
    for metric in (names.HTTP_SERVER_REQUEST_DURATION, names.GATEWAY_REQUESTS, names.GATEWAY_TOKENS,
                   names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, names.GEN_AI_OUTPUT_TOKENS):
        for series in names.prometheus_series(metric):
            assert f"\n{series}{{" in scrape.text, series
    assert not [s for s in handle.memory.spans() if s.name.startswith("GET")]  # probes leave no spans


def test_sigterm_lets_requests_in_flight_finish_and_flushes_telemetry(tmp_path, upstream_peer, keyring):
    port = free_port()
    state = tmp_path / "state"
    log = tmp_path / "serve.log"
    proc = start_process(
        [sys.executable, "-m", "gpt_observatory.commands.serve", "--backend", "upstream", "--upstream-url",
         upstream_peer.url, "--upstream-models", "delay-1", "--port", str(port), "--api-keys-file", str(keyring.path)],
        log, env={"OBSERVATORY_STATE_DIR": str(state), "PYTHONPATH": str(REPO)}, cwd=tmp_path,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc, log=log)
        result: dict = {}

        def slow_call() -> None:
            body = {"model": "delay-1", "messages": [{"role": "user", "content": "hi"}]}
            result["r"] = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=30,
                                     headers={"authorization": f"Bearer {keyring.acme}"})

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(0.4)  # the request is now waiting on the upstream
        os.killpg(proc.pid, signal.SIGTERM)
        caller.join(30)
        assert proc.wait(30) == 0
    finally:
        stop_process(proc)
    assert result["r"].status_code == 200, log.read_text()[-2000:]
    spans = [json.loads(line) for line in (state / "telemetry" / "traces.jsonl").read_text().splitlines()]
    assert "chat delay-1" in {s["name"] for s in spans}  # flushed on the way out
    exported = "\n".join(p.read_text() for p in (state / "telemetry").glob("*.jsonl"))
    assert_no_secrets(exported, [keyring.acme])


def test_nothing_secret_is_exported(gateway, memory_telemetry, keyring, token, dev_idp):
    for key in (keyring.acme, token):
        client = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
        client.chat.completions.create(model="tiny-gpt", messages=[{"role": "user", "content": PROMPT}])
        list(client.completions.create(model="tiny-gpt", prompt=PROMPT, stream=True))
    forged = token[:-4] + "AAAA"
    for key in (forged, keyring.acme[:-2] + "zz", keyring.globex):
        r = httpx.post(gateway.v1 + "/completions", json={"model": "tiny-gpt", "prompt": PROMPT},
                       headers={"authorization": f"Bearer {key}"})
        assert r.status_code in (401, 403)
    settle(memory_telemetry)
    text = exported_text(memory_telemetry)
    assert "text_completion tiny-gpt" in text and names.GATEWAY_REQUESTS.name in text
    assert_no_secrets(text, [keyring.acme, keyring.globex, token, forged, PROMPT])
