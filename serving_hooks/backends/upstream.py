"""Proxy an OpenAI-compatible server (vLLM, another gateway, ...).

Bodies pass through as sent; streams are relayed event by event as they arrive. The inference
CLIENT span's context goes upstream as ``traceparent``; the caller's credential never does (an
``upstream_api_key`` may). Usage for metering comes from the upstream's answer: for streams the
proxy asks for ``stream_options.include_usage`` and drops that extra chunk again when the caller
did not ask for it. Upstream 5xx, connection failures and malformed answers (a body that is not
JSON, ``usage`` counts that are not non-negative integers) answer 502, timeouts 504 (an optional figure
that fails its check, ``usage.prompt_tokens_details.cached_tokens`` past the prompt tokens or not a
count, is only ignored: counted in ``observatory.upstream.ignored_fields`` and logged at most once a
minute; a valid one goes to ``RequestContext.cached_tokens`` for pricing and the ledger); a 4xx keeps its
status but gets our own error body: an upstream's body and headers never reach the caller (one that
echoes the ``Authorization`` it got would hand out the upstream key). ``traceparent`` goes
upstream; of the caller's ``baggage`` and ``tracestate`` only the entries named by
``forward_baggage_keys`` / ``forward_tracestate_keys`` do (none by default; baggage as the
configured propagators extracted it, within W3C's size limits). The upstream URL is shown without
its credentials everywhere (readiness, error bodies, spans). A stream that ends without its
``[DONE]``, or is cut, is an error to the caller (an SSE error event) and to the gateway
(``RequestContext.error_type``); a caller that leaves mid-stream is not. A stream without the
upstream's usage (cut, or an upstream that ignores ``include_usage``) is charged the prompt estimate.
A stream's cleanup (its connection, usage, GenAI span, and a pool's outstanding count) runs however
its response ends, also when its body never began (the caller left before the first byte) or the
response was dropped unsent (``_Relay``).

aiohttp is the client by measurement (``bench/gateway.py``; STYLE: ~3,650 vs ~650 req/s for httpx
as a bare proxy on this machine).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import orjson
from loguru import logger
from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.trace import TraceState
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gpt_observatory.serving_hooks import _errors
from gpt_observatory.serving_hooks._openai import ChatCompletionRequest, ChunkWriter
from gpt_observatory.serving_hooks.backends._answers import (
    Malformed,
    cached_of,
    choices_of,
    count_of,
    stats_of,
    text_of,
)
from gpt_observatory.serving_hooks.backends._streaming import Departure, EventStream
from gpt_observatory.serving_hooks.backends.base import Call, ModelBackend, Readiness, bytes_per_token_estimate
from gpt_observatory.serving_hooks.context import RequestContext
from gpt_observatory.serving_hooks.inference import GenAIHooks, GenAIRequest, Generation, GenerationStats
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.redact import without_credentials
from gpt_observatory.telemetry.settings import ConfigError
from gpt_observatory.telemetry.summed import SummedCounter

_RETRYABLE_STATUS = frozenset((502, 503, 504))  # the upstream (or a proxy before it) did not act on the call
UNSENT = "unsent"  # Exchange.settle: a stream that never went out, no fault of the upstream's


class UpstreamFailure(Exception):
    """A call that got no usable response headers from one upstream, so nothing reached the caller yet.

    ``error`` is the caller's answer if no other upstream takes the call; ``error_type`` what the
    GenAI span records; ``outcome`` the bounded kind (``connect_error``, ``reset``, ``timeout``,
    ``server_error``, ``bad_status``, ``error``); ``retryable`` whether the upstream cannot have acted
    on it (never connected, reset before any header, 502/503/504), so another may take it.
    """

    def __init__(self, error: _errors.ApiError, error_type: str, outcome: str, retryable: bool,
                 status: int | None = None) -> None:
        super().__init__(outcome)
        self.error, self.error_type, self.outcome, self.retryable, self.status = (
            error, error_type, outcome, retryable, status)


@dataclass(slots=True)
class Exchange:
    """One call on its way upstream: its generation, the body to send and where.

    ``on_settled`` (set by a pool) is called once when the answer is over (a stream at its end) with
    None, or the kind of failure (``malformed`` or the stream's failure) after the headers came, or
    :data:`UNSENT` (a stream whose body never began: the caller left first, or the response was
    dropped); and the output tokens of the answer (its usage, else the chunks relayed; None unknown).
    """

    call: Call
    gen: Generation
    body: bytes
    path: str  # under the upstream's base URL
    chat: bool
    strip_usage: bool
    on_settled: Callable[[str | None, int | None], None] | None = None

    def give_up(self, failure: UpstreamFailure) -> _errors.ApiError:
        """Mark the generation failed by ``failure``; the error to raise to the caller."""
        self.gen.fail(failure.error_type)
        return failure.error

    def settle(self, failure: str | None, output_tokens: int | None = None) -> None:
        settled, self.on_settled = self.on_settled, None
        if settled is not None:
            settled(failure, output_tokens)


class UpstreamBackend(ModelBackend):
    """Forwards OpenAI calls to ``base_url`` (the upstream's OpenAI base URL, e.g. ``http://h:8001/v1``)."""

    def __init__(
        self,
        hooks: GenAIHooks,
        base_url: str,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        timeout_s: float = 60.0,
        max_connections: int = 256,
        role: str = "champion",
        forward_baggage_keys: Iterable[str] = (),
        forward_tracestate_keys: Iterable[str] = (),
    ) -> None:
        self.hooks = hooks
        self._baggage_keys = tuple(dict.fromkeys(k.strip() for k in forward_baggage_keys if k.strip()))
        self._tracestate_keys = frozenset(k.strip() for k in forward_tracestate_keys if k.strip())
        # Credentials in the URL become a Basic Authorization header (aiohttp refuses both at once),
        # so the URL held, logged and shown carries none.
        parts = urlsplit(base_url)
        self.base_url = without_credentials(base_url.rstrip("/"))
        if parts.username is not None or parts.password is not None:
            if api_key:
                raise ConfigError("upstream_url carries credentials and upstream_api_key is set: use one of them")
            basic = aiohttp.BasicAuth(unquote(parts.username or ""), unquote(parts.password or ""))
            self._authorization: str | None = basic.encode()
        else:
            self._authorization = f"Bearer {api_key}" if api_key else None
        self.role = role
        self.timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._ignored = SummedCounter.of(__name__, names.UPSTREAM_IGNORED_FIELDS)
        self._warned_at = -60.0

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def estimate_tokens(self, body: Mapping[str, Any]) -> int:
        return bytes_per_token_estimate(body)

    async def readiness(self) -> Readiness:
        try:
            async with self._http.get(self.base_url + "/models", timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status < 500:
                    return Readiness(True, "ok", info={"upstream": self.base_url})
                return Readiness(False, "unavailable", f"upstream {self.base_url} answered HTTP {r.status}")
        except (aiohttp.ClientError, TimeoutError) as e:
            return Readiness(False, "unavailable", f"upstream {self.base_url} unreachable ({type(e).__name__})")

    async def probe(self, url: str, timeout_s: float) -> bool:
        """Whether a GET of ``url`` (a health or models endpoint of this upstream) answers 2xx in time."""
        headers = {"authorization": self._authorization} if self._authorization else None
        try:
            async with self._http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                await r.read()
                return 200 <= r.status < 300
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def models(self) -> list[dict[str, Any]]:
        try:
            async with self._http.get(self.base_url + "/models", headers=self._headers()) as r:
                if r.status != 200:
                    raise _errors.upstream_failed(f"GET /models answered HTTP {r.status}")
                return list(orjson.loads(await r.read()).get("data", []))
        except TimeoutError:
            raise _errors.upstream_timeout(self.timeout_s) from None
        except (aiohttp.ClientError, orjson.JSONDecodeError) as e:
            raise _errors.upstream_failed(type(e).__name__) from None

    async def handle(self, call: Call) -> Response:
        exchange = self.begin(call)
        try:
            try:
                resp = await self.send(exchange, exchange.gen.context())
            except UpstreamFailure as failure:
                raise exchange.give_up(failure) from None
            return await self.answer(exchange, resp)
        except BaseException as e:
            exchange.gen.end(e)
            raise

    def begin(self, call: Call) -> Exchange:
        """Start the generation (the GenAI CLIENT span) of ``call`` and prepare its upstream body; the
        same exchange can then be :meth:`send` to one upstream after another (a pool's retries)."""
        request = call.request
        chat = isinstance(request, ChatCompletionRequest)
        captured = None
        if self.hooks.capture_content:
            captured = [m.model_dump(exclude_none=True) for m in request.messages] if chat else request.prompt
        genai = GenAIRequest(
            call.operation, request.model, request.limit(), request.temperature, request.top_p, request.stream, captured
        )
        gen = self.hooks.generation(genai, None, call.ctx)
        strip_usage = request.stream and not request.include_usage
        body = call.raw
        if strip_usage:
            fields = dict(call.ctx.json) if call.ctx is not None and call.ctx.json is not None else orjson.loads(body)
            fields["stream_options"] = {**(fields.get("stream_options") or {}), "include_usage": True}
            body = orjson.dumps(fields)
        return Exchange(call, gen, body, "/chat/completions" if chat else "/completions", chat, strip_usage)

    async def send(self, exchange: Exchange, trace_context: Context) -> aiohttp.ClientResponse:
        """POST the exchange to this upstream, ``trace_context``'s span as the ``traceparent``. Returns the
        response once its headers came with 200 or a 4xx (for :meth:`answer`); raises
        :class:`UpstreamFailure` for everything else (nothing of it reached the caller yet)."""
        headers = self._headers()
        self._trace_headers(trace_context, headers)
        url = self.base_url + exchange.path
        try:
            try:
                resp = await self._http.post(url, data=exchange.body, headers=headers)
            except aiohttp.ServerDisconnectedError:
                # A pooled keep-alive connection the upstream had just closed, found dead at once (reset before
                # any header: the upstream did not act on it). Once more, on another connection.
                resp = await self._http.post(url, data=exchange.body, headers=headers)
        except (TimeoutError, aiohttp.ClientError) as e:
            raise self._failure(e) from None
        if resp.status == 200 or 400 <= resp.status < 500:
            return resp
        await _drain(resp)
        retryable = resp.status in _RETRYABLE_STATUS
        raise UpstreamFailure(_errors.upstream_failed(f"HTTP {resp.status} from {self.base_url}"), str(resp.status),
                              "server_error" if resp.status >= 500 else "bad_status", retryable, resp.status)

    async def answer(self, exchange: Exchange, resp: aiohttp.ClientResponse) -> Response:
        """The caller's response from the upstream's (a 4xx gets our own body; a stream is relayed as it
        comes); ends the generation, or leaves that to the stream's end. Raises ``ApiError`` (after
        ending the generation as failed) for an answer that cannot be passed on."""
        gen = exchange.gen
        if resp.status != 200:
            response = await self._not_ok(resp, gen)
            gen.end()
            exchange.settle(None)
            return response
        if not exchange.call.request.stream:
            try:
                response, output_tokens = await self._complete(resp, gen, exchange.chat, exchange.call.ctx)
            except _errors.ApiError:
                exchange.settle("malformed")
                raise
            gen.end()
            exchange.settle(None, output_tokens)
            return response
        return self._stream(resp, exchange)

    @property
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise _errors.not_ready("the upstream client is not started")
        return self._session

    def _failed(self, gen: Generation, error: TimeoutError | aiohttp.ClientError, doing: str) -> _errors.ApiError:
        """The answer to an upstream timeout (504) or connection failure (502); marks ``gen`` failed."""
        if isinstance(error, TimeoutError):  # before ClientError: aiohttp's timeouts are both
            gen.fail("timeout")
            return _errors.upstream_timeout(self.timeout_s)
        gen.fail(type(error).__qualname__)
        return _errors.upstream_failed(f"{type(error).__name__} {doing}")

    def _failure(self, error: TimeoutError | aiohttp.ClientError) -> UpstreamFailure:
        """A request that got no response headers: which kind, and whether another upstream may take it."""
        doing = f"calling {self.base_url}"
        name = type(error).__qualname__
        if isinstance(error, aiohttp.ConnectionTimeoutError):  # never connected: the upstream saw nothing
            return UpstreamFailure(_errors.upstream_timeout(self.timeout_s), "timeout", "connect_error", True)
        if isinstance(error, TimeoutError):  # before ClientError: aiohttp's timeouts are both
            return UpstreamFailure(_errors.upstream_timeout(self.timeout_s), "timeout", "timeout", False)
        api_error = _errors.upstream_failed(f"{type(error).__name__} {doing}")
        if isinstance(error, aiohttp.ClientConnectorError):
            return UpstreamFailure(api_error, name, "connect_error", True)
        if isinstance(error, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            return UpstreamFailure(api_error, name, "reset", True)  # reset before any header came back
        return UpstreamFailure(api_error, name, "error", False)

    def _trace_headers(self, context: Context, headers: dict[str, str]) -> None:
        """``traceparent`` of ``context``'s CLIENT span, and the caller's baggage and tracestate entries named to pass."""
        span = trace.get_current_span(context).get_span_context()
        if not span.is_valid:
            return
        headers["traceparent"] = f"00-{span.trace_id:032x}-{span.span_id:016x}-{span.trace_flags:02x}"
        if self._tracestate_keys and span.trace_state:  # the caller's, inherited by our spans
            kept = TraceState([(k, v) for k, v in span.trace_state.items() if k in self._tracestate_keys])
            if kept:
                headers["tracestate"] = kept.to_header()
        if self._baggage_keys:
            entries = baggage.get_all(context)
            named = Context()
            for key in self._baggage_keys:
                if key in entries:
                    named = baggage.set_baggage(key, entries[key], named)
            W3CBaggagePropagator().inject(headers, named)  # encodes and applies W3C's size limits

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self._authorization:
            headers["authorization"] = self._authorization
        return headers

    async def _not_ok(self, resp: aiohttp.ClientResponse, gen: Generation) -> Response:
        await _drain(resp)
        gen.fail(str(resp.status))
        error = _errors.upstream_refused(resp.status, resp.headers.get("retry-after"))
        headers = {k.decode(): v.decode() for k, v in error.headers}
        return Response(error.body(), status_code=error.status, headers=headers, media_type="application/json")

    async def _complete(self, resp: aiohttp.ClientResponse, gen: Generation, chat: bool,
                        ctx: RequestContext | None = None) -> tuple[Response, int | None]:
        """The checked answer and its ``usage.completion_tokens`` (None: not given)."""
        try:
            data = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise self._failed(gen, e, "reading the answer") from None
        finally:
            resp.release()
        try:
            answer = orjson.loads(data)
            if not isinstance(answer, dict):
                raise Malformed("not a JSON object")
            stats = stats_of(answer, self.hooks.capture_content, chat)
            gen.record(stats)
            self._cached(ctx, answer.get("usage") or {}, stats.input_tokens)
        except (orjson.JSONDecodeError, Malformed, AttributeError, TypeError) as e:
            gen.fail("malformed_response")
            reason = e.args[0] if isinstance(e, Malformed) else "not JSON"
            raise _errors.upstream_failed(f"malformed answer from the upstream ({reason})") from None
        return Response(data, media_type="application/json"), stats.output_tokens  # checked JSON: never the upstream's content type

    def _stream(self, resp: aiohttp.ClientResponse, exchange: Exchange) -> Response:
        relay = _Relay(self, resp, exchange)
        response = _Relayed(relay)
        loop = asyncio.get_running_loop()

        def dropped() -> None:  # the response was never called: nothing else would end the relay
            try:  # on the loop, not inside the garbage collector (which may run amid a span processor's lock)
                loop.call_soon_threadsafe(relay.close, True)
            except RuntimeError:  # the loop is closed: nothing left to release but the records
                relay.close(True)

        relay.finalizer = weakref.finalize(response, dropped)
        relay.finalizer.atexit = False
        return response

    def _cached(self, ctx: RequestContext | None, usage: dict[str, Any], prompt_tokens: int | None) -> None:
        """Put the answer's cached prompt tokens on ``ctx``; a figure that fails its check is ignored
        (counted, logged at most once a minute: the answer itself is fine)."""
        if ctx is None:
            return
        try:
            ctx.cached_tokens = cached_of(usage, prompt_tokens)
        except Malformed as e:
            self._ignored.add(1, {names.UPSTREAM_FIELD: "cached_tokens"})
            now = time.monotonic()
            if now - self._warned_at >= 60:
                self._warned_at = now
                logger.warning("upstream {}: {}; ignored (counted in {})", self.base_url, e.args[0],
                               names.UPSTREAM_IGNORED_FIELDS.name)

    def _inspect(self, event: bytes, gen: Generation, stats: GenerationStats, strip_usage: bool,
                 ctx: RequestContext | None = None) -> bool:
        """Check and meter one SSE event; False drops it (the usage chunk the caller did not ask for,
        and anything that is not a ``data:`` event: comments and other fields are never relayed).
        A data event that is not a chunk (a JSON object whose ``choices`` is a list of objects) is
        :class:`Malformed`."""
        if not event.startswith(b"data:"):
            return False
        if event.startswith(b"data: [DONE]"):
            return True
        try:
            chunk = orjson.loads(event[5:])
        except orjson.JSONDecodeError:
            raise Malformed("not JSON") from None
        if not isinstance(chunk, dict):
            raise Malformed("not a JSON object")
        choices = choices_of(chunk, required=False)
        if stats.response_id is None:
            stats.response_id = text_of(chunk, "id") or ""
            stats.response_model = text_of(chunk, "model")
        for choice in choices:
            reason = text_of(choice, "finish_reason")
            if reason:
                stats.finish_reasons = (*stats.finish_reasons, reason)
        usage = chunk.get("usage")
        if usage is not None:
            if not isinstance(usage, dict):
                raise Malformed("usage is not an object")
            stats.input_tokens = count_of(usage, "prompt_tokens")
            stats.output_tokens = count_of(usage, "completion_tokens")
            self._cached(ctx, usage, stats.input_tokens)
            if not choices:
                return not strip_usage
        gen.token()
        return True


class _Relay:
    """One upstream stream on its way to the caller. :meth:`close` is its cleanup (the connection
    back to the pool, the usage, ``RequestContext.error_type``, the GenAI span, the pool's attempt),
    run once whichever way the stream ends: at the end of the body; when the response was called but
    the body never began (the caller left first: Starlette cancels a body task that has not started,
    an ASGI 2.4 server raises on the first send, and an unstarted generator has no ``finally`` to
    run); or when the response is dropped without being called (:meth:`UpstreamBackend._stream`'s
    finalizer)."""

    __slots__ = ("backend", "closed", "departure", "done", "error", "exchange", "failure", "finalizer", "resp",
                 "stats")

    def __init__(self, backend: UpstreamBackend, resp: aiohttp.ClientResponse, exchange: Exchange) -> None:
        self.backend, self.resp, self.exchange = backend, resp, exchange
        self.stats = GenerationStats()
        self.error: BaseException | None = None
        self.failure: str | None = None
        self.departure: Departure | None = None
        self.finalizer: weakref.finalize[Any, Any] | None = None
        self.done = self.closed = False

    def events(self, departure: Departure) -> AsyncIterator[bytes]:
        self.departure = departure
        return self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        backend, resp, gen = self.backend, self.resp, self.exchange.gen
        strip_usage, stats, ctx = self.exchange.strip_usage, self.stats, self.exchange.call.ctx
        self.done = True  # the body began: what happens from here is settled by its own end
        ended = False
        buffer = b""
        try:
            async for data in resp.content.iter_any():
                buffer += data
                if b"\n\n" not in buffer:
                    continue
                *events, buffer = buffer.split(b"\n\n")
                for i, ev in enumerate(events):
                    if ev.startswith(b"data: [DONE]"):  # the end: whatever follows it is not relayed
                        events, ended = events[: i + 1], True
                        break
                out = [ev for ev in events if ev and backend._inspect(ev, gen, stats, strip_usage, ctx)]
                if out:
                    yield b"\n\n".join(out) + b"\n\n"
                if ended:
                    break
            if not ended:  # ended without [DONE]: cut or truncated
                self.failure = "stream_truncated"
                yield ChunkWriter.error("the upstream ended the stream before it finished", "upstream_error")
        except Malformed as e:
            self.failure = "malformed_response"
            yield ChunkWriter.error(f"malformed chunk from the upstream ({e.args[0]})", "upstream_error")
        except TimeoutError:
            self.failure = "timeout"
            yield ChunkWriter.error(f"upstream stalled for {backend.timeout_s:g} s", "upstream_timeout")
        except aiohttp.ClientError as e:
            self.failure = type(e).__qualname__
            yield ChunkWriter.error("upstream connection failed mid-stream", "upstream_error")
        except BaseException as e:  # cancelled: the client left (not an error of ours) or the server stops
            if self.departure is None or not self.departure.gone:
                self.error = e
                self.failure = type(e).__qualname__
            raise
        finally:
            self.close()

    def close(self, dropped: bool = False) -> None:
        """End the stream's records (once). A body that never began is the caller's departure when it
        left (not an error of ours, as a caller leaving mid-stream is not), else ``stream_not_sent``;
        either way the pool's attempt is :data:`UNSENT`, not held against the replica."""
        if self.closed:
            return
        self.closed = True
        if self.finalizer is not None:
            self.finalizer.detach()
        exchange, gen, stats = self.exchange, self.exchange.gen, self.stats
        ctx = exchange.call.ctx
        self.resp.release()
        settled = self.failure
        if not self.done:
            settled = UNSENT
            if dropped or self.departure is None or not self.departure.gone:
                self.failure = "stream_not_sent"
        if self.failure is not None:
            if self.error is None:
                gen.fail(self.failure)
            if ctx is not None:
                ctx.error_type = self.failure
        if stats.input_tokens is None:  # no usage from the upstream: the prompt reached it all the same
            stats.input_tokens = bytes_per_token_estimate(_body(exchange.call))
        gen.record(stats)
        gen.end(self.error)
        exchange.settle(settled, stats.output_tokens if stats.output_tokens is not None else gen.tokens)


class _Relayed(EventStream):
    """The relayed stream's response: its :class:`_Relay` is closed once the response was sent, or
    failed to be, even when the body never began."""

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay
        super().__init__(relay.events)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.relay.close()


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read and drop a body that is never shown, so the connection goes back to the pool."""
    try:
        await resp.read()
    except (aiohttp.ClientError, TimeoutError):
        pass
    finally:
        resp.release()


def _body(call: Call) -> Mapping[str, Any]:
    """The request body as JSON (parsed by the gateway when it is in front)."""
    if call.ctx is not None and call.ctx.json is not None:
        return call.ctx.json
    return orjson.loads(call.raw)
