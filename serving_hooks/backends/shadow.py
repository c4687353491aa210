"""Shadow traffic: a copy of a share of live requests (and of named tenants' requests) goes to the
``challenger`` after the champion's answer is sent; the caller only ever sees the champion.

The champion's answer is recorded as it is sent (the time and bytes of each ASGI body message, no
parsing); once its last byte went out the mirror is offered to a bounded queue (``put_nowait``: a
full queue drops the mirror and counts it, the user request never waits). Background tasks, as many
as the challenger has generation threads, work the queue: each mirror is its own trace (a span
``observatory.shadow`` flagged ``observatory.shadow=true``, linked to the user request's span), the
challenger's call carries no gateway context, so it is neither metered nor rate-limited. It has a
context of its own (:class:`~serving_hooks.context.RequestContext`, the tokens and version the
challenger reports) that, with the user request's, goes to ``on_mirror`` when one is set: the app
gives the usage ledger's (:func:`serving_hooks.ledger.mirror_recorder`), which writes the mirror as a
row that is not billable (the GPU work is real, the tenant does not pay for it).

Both sides of a mirrored request are measured the same way, from their ASGI responses, into the
``observatory.shadow.*`` metrics by role and version: duration, TTFT and TPOT (streams), output
tokens, errors; and how the challenger's answer differs from the champion's on the same request:
exact match, and the ratio of output lengths. A length ratio and not a token-level edit distance:
it costs O(1) per pair in the serving process (an edit distance is O(n·m) under the GIL, beside the
user traffic), and it catches what garbage looks like (empty, truncated or runaway answers); two
retrained versions rarely agree token by token, so an edit distance says little more than the
exact-match rate already does.

As with the canary, an in-process challenger takes mirrors only while its registry alias exists. The
challenger may instead be an upstream replica pool (a catalog ``upstream`` entry's ``shadow_replicas``):
it takes mirrors while it has a healthy replica (else they are dropped, ``no_challenger``), each is
sent under ``challenger_model`` (the id that pool serves) to that pool only (never the champion's, nor
a fallback), and each side's version label is the one given in ``versions`` (the upstream model id).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from loguru import logger
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gpt_observatory.serving_hooks._errors import ApiError
from gpt_observatory.serving_hooks.backends.base import Call, ModelBackend, ModelRouter, Readiness
from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
from gpt_observatory.serving_hooks.context import RequestContext
from gpt_observatory.serving_hooks.inference import MIRRORED
from gpt_observatory.telemetry import names

_SCOPE: Scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "method": "POST"}
_ROUTES = {names.GEN_AI_OPERATION_CHAT: "/v1/chat/completions", names.GEN_AI_OPERATION_TEXT_COMPLETION: "/v1/completions"}


@dataclass(frozen=True, slots=True)
class ShadowPolicy:
    """Which requests are mirrored while a challenger is loaded, and how much waiting is allowed.

    ``share``: fraction of requests (0..1); ``tenants``: every request of theirs; ``queue_size``:
    mirrors waiting at most; ``concurrency``: mirrors in flight at once; ``timeout_s``: a challenger
    call taking longer is an error (``timeout``) and frees its worker.
    """

    share: float = 0.0
    tenants: frozenset[str] = frozenset()
    queue_size: int = 256
    concurrency: int = 4
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"shadow share must be within 0..1, got {self.share}")
        if self.queue_size < 1 or self.concurrency < 1:
            raise ValueError("shadow queue_size and concurrency must be at least 1")

    @classmethod
    def of(cls, share: float, tenants: Iterable[str] = (), **limits: Any) -> ShadowPolicy:
        return cls(share, frozenset(tenants), **limits)


@dataclass(slots=True)
class Answer:
    """One side's answer as it was sent: status, and (perf-counter time, bytes) per body message."""

    start: float
    stream: bool
    status: int = 0
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    error: str | None = None  # set when no answer came (raised, timed out)


@dataclass(frozen=True, slots=True)
class Reading:
    """What one side's answer amounts to."""

    text: str
    tokens: int
    duration_s: float
    ttft_s: float | None
    error: str | None


@dataclass(frozen=True, slots=True)
class Mirrored:
    """One mirror the challenger answered or failed, as ``on_mirror`` gets it: the user request's
    context (``caller``: tenant, principal, price; None without the gateway) and the challenger call's
    own (``ctx``: its tokens, the version that answered)."""

    caller: RequestContext | None
    ctx: RequestContext
    route: str  # the user request's
    model: str  # the catalog name the caller asked for
    stream: bool
    trace_id: str | None  # the user request's trace (32 hex digits)
    arrived: float  # epoch seconds: when the challenger was asked
    status: int  # the challenger's HTTP status (500 when it raised, 504 when it timed out)
    error: str | None  # set when it failed (names an error type, never a text)
    duration_s: float
    ttft_s: float | None
    version: str | None  # the challenger's MLflow version


@dataclass(frozen=True, slots=True)
class _Label:
    """What ``canary_status`` shows of a challenger that is not in process."""

    name: str
    version: str | None
    alias: str | None


@dataclass(frozen=True, slots=True)
class _Mirror:
    call: Call
    champion: Answer
    champion_version: str | None
    link: trace.SpanContext


class _Recorded(Response):
    """The champion's response, sent as is; the mirror is offered once its last byte went out."""

    def __init__(self, inner: Response, answer: Answer, done: Any) -> None:  # no super(): nothing to render
        self._inner, self._answer, self._done = inner, answer, done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self._answer

        async def recording(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body":
                answer.chunks.append((time.perf_counter(), message.get("body", b"")))
            elif message["type"] == "http.response.start":
                answer.status = message["status"]

        await self._inner(scope, receive, recording)
        self._done(answer)


class _Mirroring(ModelBackend):
    """The champion, answering a request that is also mirrored."""

    def __init__(self, router: ShadowRouter) -> None:
        self._router = router
        self.role = router.champion.role

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def readiness(self) -> Readiness:
        return await self._router.champion.readiness()

    async def models(self) -> list[dict[str, Any]]:
        return await self._router.champion.models()

    async def handle(self, call: Call) -> Response:
        router = self._router
        version = router.version(names.MODEL_ROLE_CHAMPION)
        link = trace.get_current_span().get_span_context()
        answer = Answer(time.perf_counter(), bool(call.request.stream))
        response = await router.champion.handle(call)
        return _Recorded(response, answer, lambda a: router.offer(_Mirror(call, a, version, link)))


class ShadowRouter(ModelRouter):
    """Serves everything from ``champion``; mirrors by :class:`ShadowPolicy` to ``challenger``: in-process
    models, or upstream backends (a replica pool) labelled by ``versions`` (role to version label) and
    asked under ``challenger_model`` (unset: the model id the champion is asked under)."""

    def __init__(self, champion: ModelBackend, challenger: ModelBackend, policy: ShadowPolicy, *,
                 versions: Mapping[str, str] | None = None, challenger_model: str | None = None) -> None:
        super().__init__({names.MODEL_ROLE_CHAMPION: champion, names.MODEL_ROLE_CHALLENGER: challenger})
        self._champion = champion
        self._challenger = challenger
        self.policy = policy
        self._versions = dict(versions or {})
        self._challenger_model = challenger_model
        self._random = random.random
        self._mirroring = _Mirroring(self)
        self.on_mirror: Callable[[Mirrored], None] | None = None  # set by the app: the usage ledger's
        self._queue: asyncio.Queue[_Mirror] | None = None
        self._workers: list[asyncio.Task] = []
        self._tracer = trace.get_tracer(__name__)
        meter = metrics.get_meter(__name__)

        def histogram(m: names.Metric, buckets: tuple[float, ...]) -> Any:
            return meter.create_histogram(m.name, m.unit, m.description, explicit_bucket_boundaries_advisory=buckets)

        self._duration = histogram(names.SHADOW_REQUEST_DURATION, names.DURATION_BUCKETS)
        self._ttft = histogram(names.SHADOW_TIME_TO_FIRST_TOKEN, names.TTFT_BUCKETS)
        self._tpot = histogram(names.SHADOW_TIME_PER_OUTPUT_TOKEN, names.TPOT_BUCKETS)
        self._ratio = histogram(names.SHADOW_LENGTH_RATIO, names.SHADOW_LENGTH_RATIO_BUCKETS)
        m = names.SHADOW_OUTPUT_TOKENS
        self._tokens = meter.create_counter(m.name, m.unit, m.description)
        m = names.SHADOW_COMPARISONS
        self._comparisons = meter.create_counter(m.name, m.unit, m.description)
        m = names.SHADOW_DROPPED
        self._dropped = meter.create_counter(m.name, m.unit, m.description)

    def version(self, role: str) -> str | None:
        """The version label of ``role``'s side: the loaded model's (in process), else the configured one."""
        backend = self.backends[role]
        if isinstance(backend, InProcessBackend):
            loaded = backend.current
            return loaded.info.version if loaded is not None else None
        return self._versions.get(role)

    def _takes_mirrors(self) -> bool:
        """Whether the challenger can take a mirror now: its alias is loaded (in process), or it has a
        healthy replica (a pool; a backend without that notion always can)."""
        challenger = self._challenger
        if isinstance(challenger, InProcessBackend):
            return challenger.current is not None
        healthy = getattr(challenger, "has_healthy", None)
        return healthy is None or bool(healthy())

    def select(self, call: Call) -> ModelBackend:
        challenger = self._challenger  # a pool without a healthy replica: mirrored, then dropped (counted)
        if self._queue is None or (isinstance(challenger, InProcessBackend) and challenger.current is None):
            return self._champion
        policy = self.policy
        ctx = call.ctx
        if ctx is not None and ctx.tenant in policy.tenants:
            return self._mirroring
        share = policy.share
        if share >= 1.0 or (share > 0.0 and self._random() < share):
            return self._mirroring
        return self._champion

    def offer(self, mirror: _Mirror) -> None:
        """Queue a mirror, or drop and count it when the queue is full (never waits)."""
        try:
            self._queue.put_nowait(mirror)  # type: ignore[union-attr]  # select mirrors only once started
        except asyncio.QueueFull:
            self._drop(mirror, "queue_full")

    @property
    def pending(self) -> int:
        """Mirrors waiting for a worker."""
        return self._queue.qsize() if self._queue is not None else 0

    def canary_status(self) -> dict[str, Any]:
        """What ``/readyz`` shows about the challenger's judging: fed by mirrors (``source: shadow``)."""
        challenger = self._challenger
        if isinstance(challenger, InProcessBackend):
            loaded = challenger.current
            info: Any = loaded.info if loaded is not None else None
        else:  # an upstream pool: its name, the configured version label, no registry alias
            info = _Label(getattr(challenger, "model", ""), self.version(names.MODEL_ROLE_CHALLENGER), None)
        return {
            "source": "shadow",
            "share": self.policy.share if info is not None else 0.0,
            "configured_share": self.policy.share,
            "tenants": sorted(self.policy.tenants) if info is not None else [],
            "queued": self.pending,
            "queue_size": self.policy.queue_size,
            "challenger": None if info is None else {"name": info.name, "version": info.version, "alias": info.alias},
        }

    async def start(self) -> None:
        await super().start()
        self._queue = asyncio.Queue(self.policy.queue_size)
        self._workers = [asyncio.create_task(self._work(), name=f"shadow-{i}") for i in range(self.policy.concurrency)]

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        self._queue = None
        await super().close()

    async def _work(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            mirror = await queue.get()
            try:
                await self._mirror(mirror)
            except Exception as e:  # the boundary: a failed mirror never reaches anyone
                logger.warning("shadow mirror failed: {}", type(e).__qualname__)

    async def _mirror(self, mirror: _Mirror) -> None:
        if not self._takes_mirrors():  # the alias went away while the mirror waited, or no replica is healthy
            self._drop(mirror, "no_challenger")
            return
        challenger_version = self.version(names.MODEL_ROLE_CHALLENGER)
        call = mirror.call
        model = call.request.model
        links = [Link(mirror.link)] if mirror.link.is_valid else []
        attrs = {names.SHADOW: True, names.GEN_AI_REQUEST_MODEL: model, names.MODEL_ROLE: names.MODEL_ROLE_CHALLENGER}
        if challenger_version is not None:
            attrs[names.MODEL_VERSION] = challenger_version
        # Its own trace (an empty parent context), linked to the user request it copies.
        with self._tracer.start_as_current_span(names.SPAN_SHADOW, context=Context(), kind=SpanKind.INTERNAL,
                                                links=links, attributes=attrs) as span:
            caller = call.ctx
            own = RequestContext(principal=caller.principal, tenant=caller.tenant) if caller else RequestContext()
            arrived = time.time()
            challenger = await self._ask_challenger(self._challenger_call(call, own))
            ours = read(challenger)
            if ours.error is not None:
                span.set_attribute(names.ERROR_TYPE, ours.error)
        theirs = read(mirror.champion)
        self._record(model, names.MODEL_ROLE_CHAMPION, mirror.champion_version, theirs)
        self._record(model, names.MODEL_ROLE_CHALLENGER, challenger_version, ours)
        if theirs.error is None and ours.error is None:
            version = {names.MODEL_VERSION: challenger_version} if challenger_version is not None else {}
            match = "exact" if ours.text == theirs.text else "differs"
            self._comparisons.add(1, {names.GEN_AI_REQUEST_MODEL: model, **version, names.SHADOW_MATCH: match})
            self._ratio.record(length_ratio(ours.tokens, theirs.tokens), {names.GEN_AI_REQUEST_MODEL: model, **version})
        if self.on_mirror is not None:
            trace_id = format(mirror.link.trace_id, "032x") if mirror.link.is_valid else None
            answered = own.model.version if own.model is not None else challenger_version
            route = _ROUTES.get(call.operation, "/v1/completions")
            self.on_mirror(Mirrored(caller, own, route, model, bool(call.request.stream), trace_id, arrived,
                                    challenger.status, ours.error, ours.duration_s, ours.ttft_s, answered))

    def _challenger_call(self, call: Call, own: RequestContext) -> Call:
        """The mirror's call: the user's request under the model id the challenger serves, with its own context."""
        model = self._challenger_model
        if model is None or model == call.request.model:
            return Call(call.operation, call.request, call.raw, own)
        fields = orjson.loads(call.raw)
        fields["model"] = model
        return Call(call.operation, call.request.model_copy(update={"model": model}), orjson.dumps(fields), own)

    async def _ask_challenger(self, call: Call) -> Answer:
        answer = Answer(time.perf_counter(), bool(call.request.stream))

        async def collect(message: Message) -> None:
            if message["type"] == "http.response.body":
                answer.chunks.append((time.perf_counter(), message.get("body", b"")))
            elif message["type"] == "http.response.start":
                answer.status = message["status"]

        async def receive() -> Message:  # never asked with ASGI spec 2.4 (disconnects surface as send errors)
            return {"type": "http.disconnect"}

        mirrored = MIRRORED.set(True)
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                response = await self._challenger.handle(call)
                await response(_SCOPE, receive, collect)
        except ApiError as e:
            answer.error = e.reason or f"http_{e.status}"
            answer.status = answer.status or e.status
        except TimeoutError:
            answer.error = "timeout"
            answer.status = answer.status or 504
        except Exception as e:
            answer.error = type(e).__qualname__
            answer.status = answer.status or 500
        finally:
            MIRRORED.reset(mirrored)
        return answer

    def _record(self, model: str, role: str, version: str | None, reading: Reading) -> None:
        attrs: dict[str, Any] = {names.GEN_AI_REQUEST_MODEL: model, names.MODEL_ROLE: role}
        if version is not None:
            attrs[names.MODEL_VERSION] = version
        if reading.error is not None:
            attrs[names.ERROR_TYPE] = reading.error
        self._duration.record(reading.duration_s, attrs)
        if reading.tokens:
            self._tokens.add(reading.tokens, attrs)
        if reading.ttft_s is not None and reading.error is None:
            self._ttft.record(reading.ttft_s, attrs)
            if reading.tokens > 1:
                self._tpot.record((reading.duration_s - reading.ttft_s) / (reading.tokens - 1), attrs)

    def _drop(self, mirror: _Mirror, reason: str) -> None:
        self._dropped.add(1, {names.GEN_AI_REQUEST_MODEL: mirror.call.request.model, names.SHADOW_DROP_REASON: reason})


def length_ratio(challenger_tokens: int, champion_tokens: int) -> float:
    """Challenger output length over the champion's (1.0 when both are empty)."""
    if champion_tokens <= 0:
        return 1.0 if challenger_tokens <= 0 else float(challenger_tokens)
    return challenger_tokens / champion_tokens


def read(answer: Answer) -> Reading:
    """Text, output tokens, timings and error of an OpenAI answer as it was sent (off the request path)."""
    end = answer.chunks[-1][0] if answer.chunks else time.perf_counter()
    duration = end - answer.start
    if answer.error is not None:
        return Reading("", 0, duration, None, answer.error)
    if answer.status != 200:
        return Reading("", 0, duration, None, f"http_{answer.status}")
    try:
        if not answer.stream:
            body = orjson.loads(b"".join(chunk for _, chunk in answer.chunks))
            choice = body["choices"][0]
            text = (choice.get("message") or {}).get("content") or choice.get("text") or ""
            return Reading(text, int(body["usage"]["completion_tokens"]), duration, None, None)
        return _read_stream(answer, duration)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return Reading("", 0, duration, None, "unreadable_answer")


def _read_stream(answer: Answer, duration: float) -> Reading:
    pieces: list[str] = []
    first: float | None = None
    usage: int | None = None
    for at, chunk in answer.chunks:
        for line in chunk.split(b"\n"):
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = orjson.loads(line[6:])
            if "error" in event:
                return Reading("", len(pieces), duration, None, "stream_error")
            for choice in event.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                if piece:
                    pieces.append(piece)
                    first = at if first is None else first
            if event.get("usage"):
                usage = int(event["usage"]["completion_tokens"])
    ttft = None if first is None else first - answer.start
    return Reading("".join(pieces), usage if usage is not None else len(pieces), duration, ttft, None)
