"""GenAI instrumentation around one generation call, streaming or not.

Model code reports what happened with plain values (:meth:`Generation.token` as each token is
sent, and a :class:`GenerationStats` at the end); these hooks alone turn them
into the span ``{gen_ai.operation.name} {gen_ai.request.model}``, the GenAI metrics and the usage
the gateway meters (the split vLLM keeps between its engine stats and its metric loggers).

Two modes, per the GenAI conventions: ``server`` (the model runs in this process: INTERNAL span,
``gen_ai.server.*`` metrics and ``observatory.gen_ai.server.token.usage``) and ``client`` (we call an
upstream model server: CLIENT span, ``gen_ai.client.*`` metrics, chunks instead of tokens).
Prompt and completion text are recorded only when ``capture_content`` is on. GPU figures come
from torch's host-side allocator counters when CUDA is already initialised: no NVML call and no
synchronisation per request.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
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
    ) -> None:
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

        if mode == "server":
            self._duration = histogram(names.GEN_AI_SERVER_REQUEST_DURATION, names.DURATION_BUCKETS)
            self._ttft = histogram(names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, names.TTFT_BUCKETS)
            self._tpot = histogram(names.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN, names.TPOT_BUCKETS)
            self._usage = histogram(names.GEN_AI_SERVER_TOKEN_USAGE, names.TOKEN_BUCKETS)
        else:
            self._duration = histogram(names.GEN_AI_CLIENT_OPERATION_DURATION, names.DURATION_BUCKETS)
            self._ttft = histogram(names.GEN_AI_CLIENT_TIME_TO_FIRST_CHUNK, names.TTFT_BUCKETS)
            self._tpot = histogram(names.GEN_AI_CLIENT_TIME_PER_OUTPUT_CHUNK, names.TPOT_BUCKETS)
            self._usage = histogram(names.GEN_AI_CLIENT_TOKEN_USAGE, names.TOKEN_BUCKETS)
        self._output_tokens = SummedCounter.of(__name__, names.GEN_AI_OUTPUT_TOKENS)

    def generation(
        self, request: GenAIRequest, model: ModelInfo | None = None, usage_sink: UsageSink | None = None
    ) -> Generation:
        """A context manager around one generation call (or call :meth:`Generation.end` when it finishes)."""
        return Generation(self, request, model, usage_sink)


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
        self._span = hooks._tracer.start_span(f"{request.operation} {request.model}", kind=hooks._kind)
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
        hooks._duration.record(end - self._start, attrs)
        if self._first is not None and error is None:
            hooks._ttft.record(self._first - self._start, attrs)
            chunks = self._tokens if hooks.mode == "client" else output_tokens
            if chunks > 1:
                hooks._tpot.record((end - self._first) / (chunks - 1), attrs)
        if stats.input_tokens is not None:
            hooks._usage.record(input_tokens, {**attrs, names.GEN_AI_TOKEN_TYPE: names.GEN_AI_TOKEN_TYPE_INPUT})
        if stats.output_tokens is not None or self._tokens:
            hooks._usage.record(output_tokens, {**attrs, names.GEN_AI_TOKEN_TYPE: names.GEN_AI_TOKEN_TYPE_OUTPUT})
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
            if request.prompt is not None:
                extra[names.GEN_AI_INPUT_MESSAGES] = _json(request.prompt)
            if stats.completion is not None:
                extra[names.GEN_AI_OUTPUT_MESSAGES] = _json(stats.completion)
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
