"""GenAI instrumentation around one generation call, streaming or not.

Model code reports what happened with plain values (:meth:`Generation.token` as each token is
sent, and a :class:`GenerationStats` at the end); these hooks alone turn them
into the span ``{gen_ai.operation.name} {gen_ai.request.model}``, the GenAI metrics and the usage
the gateway meters (the split vLLM keeps between its engine stats and its metric loggers).

Two modes, per the GenAI conventions: ``server`` (the model runs in this process: INTERNAL span,
``gen_ai.server.*`` metrics and ``observatory.gen_ai.server.token.usage``) and ``client`` (we call an
upstream model server: CLIENT span, ``gen_ai.client.*`` metrics, chunks instead of tokens).
Names: the ``opentelemetry-semantic-conventions`` 0.66b0 ones by default; the pinned GenAI release's
(``telemetry/_genai_latest.py``) when ``OTEL_SEMCONV_STABILITY_OPT_IN`` holds
``gen_ai_latest_experimental`` (both with ``gen_ai_latest_experimental/dup``), chosen once per hooks
object so a request pays nothing for the choice.
Prompt and completion text are recorded only when ``capture_content`` is on. GPU figures come
from torch's host-side allocator counters when CUDA is already initialised: no NVML call and no
synchronisation per request.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.summed import SummedCounter

Mode = Literal["server", "client"]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """The model serving a request, as the registry knows it."""

    name: str
    version: str | None = None
    alias: str | None = None
    role: str | None = None  # "champion" | "challenger"


@dataclass(slots=True)
class GenAIRequest:
    """What the caller asked for (``prompt`` is recorded only with content capture on)."""

    operation: str
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    prompt: Any = None


@dataclass(slots=True)
class GenerationStats:
    """What the model code hands to the hooks when a generation ends."""

    input_tokens: int | None = None
    output_tokens: int | None = None  # None: the count of token()/chunk calls is used
    finish_reasons: tuple[str, ...] = ()
    response_id: str | None = None
    response_model: str | None = None
    completion: str | None = None  # recorded only with content capture on


class UsageSink(Protocol):
    """Where final token usage goes for metering (the gateway's request context)."""

    def record_usage(self, input_tokens: int, output_tokens: int) -> None: ...


class GenAIHooks:
    """Creates the GenAI instruments once; :meth:`generation` wraps each call."""

    def __init__(
        self,
        mode: Mode = "server",
        *,
        provider: str = names.GEN_AI_PROVIDER,
        capture_content: bool = False,
        server_address: str | None = None,
        server_port: int | None = None,
        models: Iterable[str] = (),
        semconv_opt_in: str | None = None,
    ) -> None:
        """``semconv_opt_in``: the ``OTEL_SEMCONV_STABILITY_OPT_IN`` value (read from the environment if None)."""
        self.mode = mode
        # The model names a metric label may carry (the served catalog); an upstream's own answer in
        # gen_ai.response.model is labelled names.MODEL_OTHER when it is not one, so it cannot grow the
        # series (the span keeps what the upstream said).
        self.models = frozenset(models)
        self.provider = provider
        self.capture_content = capture_content
        self._kind = SpanKind.INTERNAL if mode == "server" else SpanKind.CLIENT
        self._server = {}
        if mode == "client" and server_address:
            self._server = {names.SERVER_ADDRESS: server_address}
            if server_port:
                self._server[names.SERVER_PORT] = server_port
        self._tracer = trace.get_tracer(__name__)
        meter = metrics.get_meter(__name__)

        def histogram(m: names.Metric, buckets: tuple[float, ...]):
            return meter.create_histogram(m.name, m.unit, m.description, explicit_bucket_boundaries_advisory=buckets)

        def counter(m: names.Metric):
            return meter.create_counter(m.name, m.unit, m.description)

        emit = names.gen_ai_emission(os.environ.get(names.SEMCONV_OPT_IN_ENV) if semconv_opt_in is None else semconv_opt_in)
        # Content on spans: the request's own shape (0.66b0) or the release's messages schema.
        self.structured_content = emit.latest
        # Tokens by gen_ai.token.type on one histogram (ours in process, 0.66b0's as a client) ...
        self._usage: Any = None
        # ... or the release's: one histogram and one counter per direction (client only).
        self._usage_latest: tuple[Any, Any, Any, Any] | None = None
        if mode == "server":  # the release keeps the server names; ours for tokens stays too
            durations = ((names.GEN_AI_SERVER_REQUEST_DURATION, names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
                          names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN),)
            self._usage = histogram(names.GEN_AI_SERVER_TOKEN_USAGE, names.TOKEN_BUCKETS)
        else:
            durations = ()
            if emit.legacy:
                durations += ((names.GEN_AI_CLIENT_OPERATION_DURATION, names.GEN_AI_CLIENT_TIME_TO_FIRST_CHUNK,
                               names.GEN_AI_CLIENT_TIME_PER_OUTPUT_CHUNK),)
                self._usage = histogram(names.GEN_AI_CLIENT_TOKEN_USAGE, names.TOKEN_BUCKETS)
            if emit.latest:
                durations += ((names.GEN_AI_CLIENT_INFERENCE_DURATION, names.GEN_AI_CLIENT_INFERENCE_TIME_TO_FIRST_CHUNK,
                               names.GEN_AI_CLIENT_INFERENCE_TIME_PER_OUTPUT_CHUNK),)
                self._usage_latest = (
                    histogram(names.GEN_AI_CLIENT_INFERENCE_OPERATION_INPUT_TOKENS, names.TOKEN_BUCKETS),
                    histogram(names.GEN_AI_CLIENT_INFERENCE_OPERATION_OUTPUT_TOKENS, names.TOKEN_BUCKETS),
                    counter(names.GEN_AI_CLIENT_INFERENCE_USAGE_INPUT_TOKENS),
                    counter(names.GEN_AI_CLIENT_INFERENCE_USAGE_OUTPUT_TOKENS),
                )
        self._duration = tuple(histogram(d, names.DURATION_BUCKETS) for d, _, _ in durations)
        self._ttft = tuple(histogram(t, names.TTFT_BUCKETS) for _, t, _ in durations)
        self._tpot = tuple(histogram(t, names.TPOT_BUCKETS) for _, _, t in durations)
        self._output_tokens = SummedCounter.of(__name__, names.GEN_AI_OUTPUT_TOKENS)

    def generation(
        self, request: GenAIRequest, model: ModelInfo | None = None, usage_sink: UsageSink | None = None
    ) -> Generation:
        """A context manager around one generation call (or call :meth:`Generation.end` when it finishes)."""
        return Generation(self, request, model, usage_sink)


# Set (by serving_hooks.backends.shadow) around a mirrored call: its generation spans carry
# observatory.shadow=true, so no reader takes them for answers a user got.
MIRRORED: ContextVar[bool] = ContextVar("observatory_mirrored", default=False)
_MIRROR_ATTRS = {names.SHADOW: True}


class Generation:
    """One generation in progress; call :meth:`token` from the generation loop as tokens are produced."""

    __slots__ = ("_error", "_first", "_hooks", "_span", "_start", "_stats", "_tokens", "info", "request", "sink")

    def __init__(self, hooks: GenAIHooks, request: GenAIRequest, info: ModelInfo | None, sink: UsageSink | None):
        self._hooks = hooks
        self.request = request
        self.info = info
        self.sink = sink
        self._stats: GenerationStats | None = None
        self._tokens = 0
        self._first: float | None = None
        self._error: str | None = None
        self._span = hooks._tracer.start_span(f"{request.operation} {request.model}", kind=hooks._kind,
                                              attributes=_MIRROR_ATTRS if MIRRORED.get() else None)
        self._start = time.perf_counter()

    # -- called by model code -------------------------------------------------------------
    def token(self, n: int = 1) -> None:
        """Count ``n`` output tokens (chunks, as a client) produced now."""
        if self._first is None:
            self._first = time.perf_counter()
        self._tokens += n

    @property
    def tokens(self) -> int:
        """Output tokens (chunks, as a client) counted so far."""
        return self._tokens

    def record(self, stats: GenerationStats) -> None:
        """The final figures of the generation (usage from the model or the upstream)."""
        self._stats = stats

    def fail(self, error_type: str) -> None:
        """Mark the generation failed without raising (e.g. an upstream error answered as 502)."""
        self._error = error_type

    def context(self) -> Context:
        """A context with this generation's span current, to inject into an upstream request."""
        return trace.set_span_in_context(self._span)

    # -- context manager --------------------------------------------------------------------
    def __enter__(self) -> Generation:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self.end(exc)

    def end(self, exc: BaseException | None = None) -> None:
        """Record everything; called by the context manager exit."""
        end = time.perf_counter()
        hooks, request, stats, span = self._hooks, self.request, self._stats or GenerationStats(), self._span
        error = self._error or (type(exc).__qualname__ if exc is not None else None)
        input_tokens = stats.input_tokens or 0
        output_tokens = stats.output_tokens if stats.output_tokens is not None else self._tokens
        attrs: dict[str, Any] = {
            names.GEN_AI_OPERATION_NAME: request.operation,
            names.GEN_AI_PROVIDER_NAME: hooks.provider,
            names.GEN_AI_REQUEST_MODEL: request.model,
            **hooks._server,
        }
        if stats.response_model:
            known = stats.response_model == request.model or stats.response_model in hooks.models
            attrs[names.GEN_AI_RESPONSE_MODEL] = stats.response_model if known else names.MODEL_OTHER
        if self.info is not None:
            if self.info.version is not None:
                attrs[names.MODEL_VERSION] = self.info.version
            if self.info.role is not None:
                attrs[names.MODEL_ROLE] = self.info.role
        if error is not None:
            attrs[names.ERROR_TYPE] = error
        for h in hooks._duration:
            h.record(end - self._start, attrs)
        if self._first is not None and error is None:
            for h in hooks._ttft:
                h.record(self._first - self._start, attrs)
            chunks = self._tokens if hooks.mode == "client" else output_tokens
            if chunks > 1:
                for h in hooks._tpot:
                    h.record((end - self._first) / (chunks - 1), attrs)
        if hooks._usage is not None:
            if stats.input_tokens is not None:
                hooks._usage.record(input_tokens, {**attrs, names.GEN_AI_TOKEN_TYPE: names.GEN_AI_TOKEN_TYPE_INPUT})
            if stats.output_tokens is not None or self._tokens:
                hooks._usage.record(output_tokens, {**attrs, names.GEN_AI_TOKEN_TYPE: names.GEN_AI_TOKEN_TYPE_OUTPUT})
        if hooks._usage_latest is not None:
            # The release: recorded for every operation, failed ones too, 0 when no usage came back.
            in_hist, out_hist, in_count, out_count = hooks._usage_latest
            in_hist.record(input_tokens, attrs)
            out_hist.record(output_tokens, attrs)
            by_modality = {**attrs, names.GEN_AI_TOKEN_MODALITY: names.GEN_AI_TOKEN_MODALITY_UNKNOWN}
            in_count.add(input_tokens, by_modality)
            out_count.add(output_tokens, by_modality)
        if output_tokens:
            hooks._output_tokens.add(output_tokens, attrs)
        if self.sink is not None:
            self.sink.record_usage(input_tokens, output_tokens)
        if span.is_recording():
            self._annotate(span, attrs, stats, input_tokens, output_tokens, exc)
        span.end()

    def _annotate(
        self,
        span: trace.Span,
        attrs: dict[str, Any],
        stats: GenerationStats,
        inp: int,
        out: int,
        exc: BaseException | None,
    ) -> None:
        request, info = self.request, self.info
        extra: dict[str, Any] = {
            **attrs,
            **({names.GEN_AI_RESPONSE_MODEL: stats.response_model[:256]} if stats.response_model else {}),
            names.GEN_AI_REQUEST_STREAM: request.stream,
            names.GEN_AI_USAGE_INPUT_TOKENS: inp,
            names.GEN_AI_USAGE_OUTPUT_TOKENS: out,
        }
        for key, value in (
            (names.GEN_AI_REQUEST_MAX_TOKENS, request.max_tokens),
            (names.GEN_AI_REQUEST_TEMPERATURE, request.temperature),
            (names.GEN_AI_REQUEST_TOP_P, request.top_p),
            (names.GEN_AI_RESPONSE_ID, stats.response_id),
            (names.MODEL_NAME, info.name if info else None),
            (names.MODEL_ALIAS, info.alias if info else None),
        ):
            if value is not None:
                extra[key] = value
        if stats.finish_reasons:
            extra[names.GEN_AI_RESPONSE_FINISH_REASONS] = list(stats.finish_reasons)
        gpu = _gpu_figures()
        if gpu is not None:
            extra[names.GPU_DEVICE_INDEX], extra[names.GPU_PEAK_MEMORY] = gpu
        if self._hooks.capture_content:
            structured = self._hooks.structured_content
            if request.prompt is not None:
                prompt = _input_messages(request.prompt) if structured else request.prompt
                extra[names.GEN_AI_INPUT_MESSAGES] = _json(prompt)
            if stats.completion is not None:
                completion = _output_messages(stats.completion, stats.finish_reasons) if structured else stats.completion
                extra[names.GEN_AI_OUTPUT_MESSAGES] = _json(completion)
        span.set_attributes(extra)  # one call: the SDK takes its lock once
        if exc is not None:
            span.record_exception(exc)
        if names.ERROR_TYPE in attrs:
            span.set_status(Status(StatusCode.ERROR, attrs[names.ERROR_TYPE]))


def _gpu_figures() -> tuple[int, int] | None:
    """(device index, peak allocated bytes) from torch when CUDA is already in use; never initialises it."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    device = torch.cuda.current_device()
    return device, int(torch.cuda.max_memory_allocated(device))


def _json(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _parts(content: Any) -> list[dict[str, Any]]:
    """A message's content as the release's ``parts`` (text parts; any other part keeps its type only)."""
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    for item in content if isinstance(content, list) else ():
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            parts.append({"type": "text", "content": item["text"]})
        elif isinstance(item, dict):
            parts.append({"type": str(item.get("type", "unknown"))})
    return parts


def _input_messages(prompt: Any) -> list[dict[str, Any]]:
    """The request's prompt as the release's input messages (a bare prompt is one user message)."""
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        return [{"role": str(m.get("role", "user")), "parts": _parts(m.get("content", ""))} for m in prompt]
    texts = prompt if isinstance(prompt, list) else [prompt]
    return [{"role": "user", "parts": [{"type": "text", "content": str(t)} for t in texts]}]


def _output_messages(completion: str, finish_reasons: tuple[str, ...]) -> list[dict[str, Any]]:
    message: dict[str, Any] = {"role": "assistant", "parts": [{"type": "text", "content": completion}]}
    if finish_reasons:
        message["finish_reason"] = finish_reasons[0]
    return [message]
