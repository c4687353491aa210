"""The GenAI hooks: one span per generation, the conventions' metrics and buckets, usage handed
to the gateway, content only on request (server mode in process, client mode when proxying)."""

from __future__ import annotations

import asyncio
import time

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from gpt_observatory.serving_hooks.inference import GenAIHooks, GenAIRequest, GenerationStats, ModelInfo
from gpt_observatory.telemetry import names

INFO = ModelInfo("tiny-gpt", "7", "champion", "champion")
SECRET_PROMPT = "the launch code is 0000"


class Sink:
    def __init__(self) -> None:
        self.usage: tuple[int, int] | None = None

    def record_usage(self, input_tokens: int, output_tokens: int) -> None:
        self.usage = (input_tokens, output_tokens)


@pytest.fixture
def handle(memory_telemetry):
    return memory_telemetry


def last_span(handle, name: str):
    spans = [s for s in handle.memory.spans() if s.name == name]
    assert spans, f"no span {name!r}"
    return spans[-1]


def histogram(handle, metric: names.Metric, **attrs):
    points = [
        p for p in handle.memory.metrics().get(metric.name, [])
        if all(p.attributes.get(k) == v for k, v in attrs.items())
    ]
    assert points, f"no {metric.name} points with {attrs}"
    return points


def test_streaming_generation_in_process(handle):
    hooks = GenAIHooks("server")
    sink = Sink()
    request = GenAIRequest("chat", "tiny-gpt", max_tokens=4, temperature=0.5, stream=True, prompt=SECRET_PROMPT)
    with hooks.generation(request, INFO, sink) as gen:
        time.sleep(0.02)  # prefill
        for _ in range(4):
            gen.token()
            time.sleep(0.005)
        gen.record(GenerationStats(11, 4, ("length",), "chatcmpl-1", "tiny-gpt", "abcd"))

    span = last_span(handle, "chat tiny-gpt")
    assert span.kind is SpanKind.INTERNAL
    attrs = span.attributes
    assert attrs[names.GEN_AI_OPERATION_NAME] == "chat"
    assert attrs[names.GEN_AI_PROVIDER_NAME] == names.GEN_AI_PROVIDER
    assert attrs[names.GEN_AI_REQUEST_MODEL] == "tiny-gpt"
    assert attrs[names.GEN_AI_REQUEST_MAX_TOKENS] == 4
    assert attrs[names.GEN_AI_REQUEST_TEMPERATURE] == 0.5
    assert attrs[names.GEN_AI_REQUEST_STREAM] is True
    assert attrs[names.GEN_AI_RESPONSE_ID] == "chatcmpl-1"
    assert tuple(attrs[names.GEN_AI_RESPONSE_FINISH_REASONS]) == ("length",)
    assert (attrs[names.GEN_AI_USAGE_INPUT_TOKENS], attrs[names.GEN_AI_USAGE_OUTPUT_TOKENS]) == (11, 4)
    assert (attrs[names.MODEL_NAME], attrs[names.MODEL_VERSION], attrs[names.MODEL_ALIAS], attrs[names.MODEL_ROLE]) == (
        "tiny-gpt", "7", "champion", "champion"
    )
    assert names.GEN_AI_INPUT_MESSAGES not in attrs and names.GEN_AI_OUTPUT_MESSAGES not in attrs
    assert SECRET_PROMPT not in span.to_json()
    assert names.GPU_DEVICE_INDEX not in attrs  # no CUDA here: nothing made up
    assert sink.usage == (11, 4)

    ttft = histogram(handle, names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, **{names.MODEL_VERSION: "7"})
    assert ttft[-1].count >= 1 and ttft[-1].min >= 0.02
    assert tuple(ttft[-1].explicit_bounds) == names.TTFT_BUCKETS
    tpot = histogram(handle, names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN)
    assert tuple(tpot[-1].explicit_bounds) == names.TPOT_BUCKETS
    duration = histogram(handle, names.GEN_AI_SERVER_REQUEST_DURATION)
    assert tuple(duration[-1].explicit_bounds) == names.DURATION_BUCKETS
    usage = histogram(handle, names.GEN_AI_SERVER_TOKEN_USAGE, **{names.GEN_AI_TOKEN_TYPE: "output"})
    assert tuple(usage[-1].explicit_bounds) == names.TOKEN_BUCKETS
    output = handle.memory.metrics()[names.GEN_AI_OUTPUT_TOKENS.name]
    assert sum(p.value for p in output) >= 4


def test_content_is_recorded_only_when_capture_is_on(handle):
    hooks = GenAIHooks("server", capture_content=True)
    with hooks.generation(GenAIRequest("text_completion", "tiny-gpt", prompt=SECRET_PROMPT), INFO) as gen:
        gen.record(GenerationStats(3, 2, ("stop",), completion="ok"))
    attrs = last_span(handle, "text_completion tiny-gpt").attributes
    assert attrs[names.GEN_AI_INPUT_MESSAGES] == SECRET_PROMPT
    assert attrs[names.GEN_AI_OUTPUT_MESSAGES] == "ok"


def test_client_mode_is_a_client_span_with_client_metrics(handle):
    hooks = GenAIHooks("client", provider="openai", server_address="10.0.0.1", server_port=8001)
    with hooks.generation(GenAIRequest("chat", "up-model", stream=True)) as gen:
        for _ in range(3):
            gen.token()
        gen.record(GenerationStats(5, 9))
    span = last_span(handle, "chat up-model")
    assert span.kind is SpanKind.CLIENT
    assert span.attributes[names.GEN_AI_PROVIDER_NAME] == "openai"
    assert span.attributes[names.SERVER_ADDRESS] == "10.0.0.1"
    assert histogram(handle, names.GEN_AI_CLIENT_TIME_TO_FIRST_CHUNK, **{names.GEN_AI_REQUEST_MODEL: "up-model"})
    chunks = histogram(handle, names.GEN_AI_CLIENT_TIME_PER_OUTPUT_CHUNK, **{names.GEN_AI_REQUEST_MODEL: "up-model"})
    assert chunks[-1].count >= 1
    usage = histogram(handle, names.GEN_AI_CLIENT_TOKEN_USAGE, **{names.GEN_AI_REQUEST_MODEL: "up-model"})
    assert {p.attributes[names.GEN_AI_TOKEN_TYPE]: p.sum for p in usage} == {"input": 5, "output": 9}
    assert names.GEN_AI_SERVER_REQUEST_DURATION.name not in {
        n for n, pts in handle.memory.metrics().items()
        if any(p.attributes.get(names.GEN_AI_REQUEST_MODEL) == "up-model" for p in pts)
    }


def test_a_failure_marks_the_span_and_the_duration(handle):
    hooks = GenAIHooks("server")
    with pytest.raises(RuntimeError), hooks.generation(GenAIRequest("chat", "broken"), INFO):
        raise RuntimeError("model crashed")
    span = last_span(handle, "chat broken")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[names.ERROR_TYPE] == "RuntimeError"
    assert histogram(handle, names.GEN_AI_SERVER_REQUEST_DURATION, **{names.ERROR_TYPE: "RuntimeError"})

    with hooks.generation(GenAIRequest("chat", "broken-upstream")) as gen:
        gen.fail("timeout")
    assert last_span(handle, "chat broken-upstream").attributes[names.ERROR_TYPE] == "timeout"


def test_a_generation_records_what_sync_and_async_model_code_hands_it(handle):
    """As the backends do: ``with hooks.generation(...)`` around the call, in plain and in async code."""
    hooks = GenAIHooks("server")

    def generate(prompt: str) -> GenerationStats:
        with hooks.generation(GenAIRequest("text_completion", "plain"), INFO) as gen:
            stats = GenerationStats(len(prompt), 3, ("stop",))
            gen.record(stats)
        return stats

    async def agenerate(prompt: str) -> GenerationStats:
        with hooks.generation(GenAIRequest("text_completion", "in-async"), INFO) as gen:
            await asyncio.sleep(0)
            stats = GenerationStats(len(prompt), 5, ("stop",))
            gen.record(stats)
        return stats

    assert generate("hello").output_tokens == 3
    assert asyncio.run(agenerate("hi")).output_tokens == 5
    assert last_span(handle, "text_completion plain").attributes[names.GEN_AI_USAGE_INPUT_TOKENS] == 5
    assert last_span(handle, "text_completion in-async").attributes[names.GEN_AI_USAGE_OUTPUT_TOKENS] == 5
