"""Streams that fail after their 200 went out are errors everywhere: the SERVER and GenAI spans, the
request metrics, the gateway counter, the SSE stream, and the queries the SLO alerts, the error
dashboards and the canary read from a real Prometheus scraping the app's ``/metrics``. The prompt
is charged even when the stream never finished; a client that leaves is not an error of ours. The
caller's baggage and tracestate reach the upstream only for the keys named to pass."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from gpt_observatory.dashboards import promql
from gpt_observatory.dashboards.boards import all_boards
from gpt_observatory.dashboards.rules import SLOS
from gpt_observatory.dashboards.scrape import GATEWAY_JOB
from gpt_observatory.dashboards.verify import query
from gpt_observatory.flows.live import LiveQueries, Prometheus, Side
from gpt_observatory.serving_hooks.app import build_hooks, create_app
from gpt_observatory.serving_hooks.backends.base import ModelRouter
from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
from gpt_observatory.serving_hooks.inference import ModelInfo
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.dashboards.conftest import prometheus_for
from tests.serving_hooks.support import by_name, point_value, serve, settle
from tests.serving_hooks.test_proxy import settings_for
from tests.serving_hooks.upstream_peer import PROMPT_TOKENS

MODEL = "flaky-model"
TOKENS_BEFORE_FAILING = 3
PROMPT = "a prompt of some length"
AVAILABILITY = next(slo for slo in SLOS if slo.name == "gateway_availability")


class FlakyModel:
    """Streams ``TOKENS_BEFORE_FAILING`` tokens, then raises; ``slow`` streams forever, slowly."""

    def __init__(self, slow: bool = False) -> None:
        self.slow = slow
        self.closed = 0

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"text": "x", "prompt_tokens": len(r["prompt"].encode()), "completion_tokens": 1,
                 "finish_reason": "length"} for r in rows]

    def predict_stream(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        try:
            for i in range(10_000 if self.slow else TOKENS_BEFORE_FAILING):
                if self.slow:
                    time.sleep(0.02)
                yield {"text": f"t{i}"}
        finally:
            self.closed += 1
        raise RuntimeError(f"CUDA error while generating for {row['prompt']!r}")  # its text must not show


@pytest.fixture
def telemetry_with_metrics(memory_telemetry):
    """Memory backends plus the Prometheus registry the app's ``/metrics`` serves."""
    from gpt_observatory import telemetry

    return telemetry.configure(
        "observatory-gateway-tests", traces_exporter=["memory"], metrics_exporter=["memory", "prometheus"],
        logs_exporter=["memory"], prometheus_serve=False, gpu_enabled=False,
    )


def _inprocess_app(keyring, model: FlakyModel):
    settings = load(api_keys_file=keyring.path, model=MODEL)
    backend = InProcessBackend(build_hooks(settings), MODEL, model=model,
                               info=ModelInfo(MODEL, "1", "champion", "champion"))
    return create_app(settings, router=ModelRouter({"champion": backend}))


def _stream(url: str, key: str, model: str, max_tokens: int, **headers: str) -> list[str]:
    """The ``data:`` events of one streamed chat completion (status 200 asserted)."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": True,
            "max_tokens": max_tokens}
    answer = httpx.post(url + "/v1/chat/completions", json=body, timeout=10,
                        headers={"authorization": f"Bearer {key}", **headers})
    assert answer.status_code == 200  # the status went out with the first chunk
    return [line for line in answer.text.splitlines() if line.startswith("data:")]


def _ok(url: str, key: str, model: str) -> None:
    events = _stream(url, key, model, 4)
    assert events[-1] == "data: [DONE]"


def _scraped(prom_url: str, expr: str, timeout: float = 30.0) -> float:
    """The summed value of ``expr`` once Prometheus has it above 0 (the scrape and the rules run each second)."""
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        value = sum(float(r["value"][1]) for r in query(prom_url, expr))
        if value > 0:
            return value
        time.sleep(0.25)
    raise AssertionError(f"Prometheus never saw {expr!r} above 0 (last {value})")


def _fail_twice(prom_url: str, fail: Any, seen: str) -> None:
    """Two failures a scrape apart: a counter series Prometheus first sees at 1 shows no increase."""
    fail()
    _scraped(prom_url, seen)
    time.sleep(1.5)
    fail()


def _panel(board: str, title: str) -> str:
    """A committed dashboard panel's query, as Grafana would run it with every variable on "All"."""
    panel = next(p for p in all_boards()[board].panels() if p.title == title)
    return promql.instant(panel.queries[0].expr)


def _assert_request_failed(handle, error_type: str, failures: int) -> None:
    settle(handle)
    spans = handle.memory.spans()
    servers = [s for s in spans if s.name == "POST /v1/chat/completions" and s.status.status_code is StatusCode.ERROR]
    assert len(servers) == failures
    assert {s.attributes[names.ERROR_TYPE] for s in servers} == {error_type}
    assert {s.attributes[names.HTTP_RESPONSE_STATUS_CODE] for s in servers} == {200}
    metrics = handle.memory.metrics()
    duration = metrics[names.HTTP_SERVER_REQUEST_DURATION.name]
    assert point_value(duration, **{names.ERROR_TYPE: error_type, names.HTTP_RESPONSE_STATUS_CODE: 200}) == failures
    requests = metrics[names.GATEWAY_REQUESTS.name]
    assert point_value(requests, **{names.TENANT: "acme", names.ERROR_TYPE: error_type}) == failures


def test_an_upstream_stream_cut_after_5_chunks_is_seen_by_span_metrics_and_the_error_queries(
    telemetry_with_metrics, upstream_peer, keyring, tmp_path
):
    handle = telemetry_with_metrics
    settings = settings_for(upstream_peer.url, keyring, upstream_models=["up-model", "cut"])
    with serve(create_app(settings)) as gw, \
            prometheus_for(tmp_path / "prom", [gw.url.removeprefix("http://")], "127.0.0.1:1") as prom:
        _ok(gw.url, keyring.acme, "up-model")

        def cut() -> None:
            events = _stream(gw.url, keyring.acme, "cut", 5)
            assert len(events) == 6 and '"upstream_error"' in events[-1]  # 5 chunks, then our error event

        _fail_twice(prom.url, cut, f'{names.prometheus_series(names.HTTP_SERVER_REQUEST_DURATION)[2]}'
                                   '{error_type="stream_truncated"}')
        sli = _scraped(prom.url, f'{AVAILABILITY.record("5m")}{{job="{GATEWAY_JOB}"}}')
        panel = _scraped(prom.url, _panel("overview", "Server error ratio"))

    _assert_request_failed(handle, "stream_truncated", 2)
    client = [s for s in handle.memory.spans() if s.kind is SpanKind.CLIENT and s.name == "chat cut"]
    assert len(client) == 2 and all(s.status.status_code is StatusCode.ERROR for s in client)
    # No usage came back from the cut streams: each is charged the prompt estimate, never 0.
    tokens = handle.memory.metrics()[names.GATEWAY_TOKENS.name]
    charged = point_value(tokens, **{names.TENANT: "acme", names.GEN_AI_TOKEN_TYPE: "input"})
    assert charged == PROMPT_TOKENS + 2 * math.ceil(len(PROMPT) / 4)  # the answered stream's usage, two estimates
    assert 0 < sli <= 1 and 0 < panel <= 1


def test_an_in_process_model_that_raises_mid_stream_is_an_error_the_canary_counts(
    telemetry_with_metrics, keyring, tmp_path
):
    handle = telemetry_with_metrics
    with serve(_inprocess_app(keyring, FlakyModel())) as gw, \
            prometheus_for(tmp_path / "prom", [gw.url.removeprefix("http://")], "127.0.0.1:1") as prom:

        def raises() -> None:
            events = _stream(gw.url, keyring.acme, MODEL, 16)
            assert len(events) == 1 + TOKENS_BEFORE_FAILING + 1  # role, the tokens, our error event
            assert '"generation_failed"' in events[-1] and "CUDA" not in events[-1] and PROMPT not in events[-1]

        served = names.prometheus_series(names.GEN_AI_SERVER_REQUEST_DURATION)[2]
        _fail_twice(prom.url, raises, f'{served}{{error_type="RuntimeError"}}')
        time.sleep(1.5)  # one more scrape after the second failure
        _scraped(prom.url, f'{served}{{error_type="RuntimeError"}} >= 2')
        side = Side("1", "champion")
        figures = LiveQueries(Prometheus(prom.url), MODEL).figures(60, [side])[side]
        sli = _scraped(prom.url, f'{AVAILABILITY.record("5m")}{{job="{GATEWAY_JOB}"}}')
        ended_by_error = _scraped(prom.url, _panel("inference", "Generations ended by an error"))
        by_role = _scraped(prom.url, _panel("inference", "Error rate by role"))

    _assert_request_failed(handle, "RuntimeError", 2)
    generations = [s for s in handle.memory.spans() if s.name == f"chat {MODEL}"]
    assert len(generations) == 2 and all(s.status.status_code is StatusCode.ERROR for s in generations)
    assert {s.attributes[names.GEN_AI_USAGE_OUTPUT_TOKENS] for s in generations} == {TOKENS_BEFORE_FAILING}
    tokens = handle.memory.metrics()[names.GATEWAY_TOKENS.name]
    prompt_tokens = point_value(tokens, **{names.TENANT: "acme", names.GEN_AI_TOKEN_TYPE: "input"})
    assert prompt_tokens >= 2 * len(PROMPT)  # the chat prompt holds the message, and it reached the model
    # The canary's figures: both failed generations counted as errors (each query extrapolates at its own instant).
    assert figures.errors > 0 and figures.error_rate == pytest.approx(1.0, rel=0.05)
    assert 0 < sli <= 1 and ended_by_error > 0 and by_role == pytest.approx(1.0, rel=0.05)


def test_a_client_that_leaves_mid_stream_is_no_error_but_its_prompt_is_charged(memory_telemetry, keyring):
    model = FlakyModel(slow=True)
    with serve(_inprocess_app(keyring, model)) as gw:
        body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True,
                "max_tokens": 4000}
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=10,
                          headers={"authorization": f"Bearer {keyring.acme}"}) as answer:
            chunks = answer.iter_bytes()
            next(chunks)
            next(chunks)
        settle(memory_telemetry)
        deadline = time.monotonic() + 5
        while not model.closed and time.monotonic() < deadline:  # the worker thread stops at its next token
            time.sleep(0.02)
    spans = memory_telemetry.memory.spans()
    server = by_name(spans, "POST /v1/chat/completions")
    generation = by_name(spans, f"chat {MODEL}")
    assert server.status.status_code is StatusCode.UNSET and names.ERROR_TYPE not in server.attributes
    assert generation.status.status_code is StatusCode.UNSET and names.ERROR_TYPE not in generation.attributes
    metrics = memory_telemetry.memory.metrics()
    assert not [p for p in metrics[names.HTTP_SERVER_REQUEST_DURATION.name] if names.ERROR_TYPE in p.attributes]
    tokens = metrics[names.GATEWAY_TOKENS.name]
    assert point_value(tokens, **{names.TENANT: "acme", names.GEN_AI_TOKEN_TYPE: "input"}) >= len(PROMPT)
    assert model.closed == 1  # the generation stopped when the client left


BAGGAGE = "tenant.region=eu-west,user.email=alice%40example.com,session=s3cr3t"
TRACESTATE = "vendor=abc123,other=leak,rojo=00f067aa0ba902b7"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _forwarding_app(upstream_peer, keyring, **forward: Any):
    """The app as ``serve`` builds it: the settings name the keys, the app hands them to UpstreamBackend."""
    return create_app(settings_for(upstream_peer.url, keyring, upstream_models=["up-model"], **forward))


def _sent_upstream(gw, keyring, upstream_peer, **headers: str) -> dict[str, str]:
    body = {"model": "up-model", "messages": [{"role": "user", "content": "x"}]}
    answer = httpx.post(gw.v1 + "/chat/completions", json=body, timeout=10,
                        headers={"authorization": f"Bearer {keyring.acme}", "traceparent": TRACEPARENT, **headers})
    assert answer.status_code == 200
    return {k.lower(): v for k, v in upstream_peer.seen[-1]["headers"].items()}


def test_only_the_named_baggage_and_tracestate_entries_go_upstream(memory_telemetry, upstream_peer, keyring):
    app = _forwarding_app(upstream_peer, keyring, forward_baggage_keys=["tenant.region", "user.email", "absent"],
                          forward_tracestate_keys=["vendor", "rojo"])
    with serve(app) as gw:
        sent = _sent_upstream(gw, keyring, upstream_peer, baggage=BAGGAGE, tracestate=TRACESTATE)
        oversized = _sent_upstream(gw, keyring, upstream_peer, baggage="tenant.region=" + "x" * 5000)
        neither = _sent_upstream(gw, keyring, upstream_peer)
    assert sent["traceparent"].split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert sorted(sent["baggage"].split(",")) == ["tenant.region=eu-west", "user.email=alice%40example.com"]
    assert sent["tracestate"] == "vendor=abc123,rojo=00f067aa0ba902b7"
    assert "s3cr3t" not in str(sent) and "leak" not in str(sent)
    assert "baggage" not in oversized  # past W3C's 4096-byte entry limit: dropped, not truncated
    assert "baggage" not in neither and "tracestate" not in neither


def test_without_named_keys_no_baggage_or_tracestate_goes_upstream(memory_telemetry, upstream_peer, keyring):
    with serve(_forwarding_app(upstream_peer, keyring)) as gw:
        sent = _sent_upstream(gw, keyring, upstream_peer, baggage=BAGGAGE, tracestate=TRACESTATE)
    assert sent["traceparent"].split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "baggage" not in sent and "tracestate" not in sent
