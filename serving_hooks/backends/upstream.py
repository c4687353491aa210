"""Proxy an OpenAI-compatible server (vLLM, another gateway, ...).

Bodies pass through as sent; streams are relayed event by event as they arrive. The inference
CLIENT span's context goes upstream as ``traceparent``; the caller's credential never does (an
``upstream_api_key`` may). Usage for metering comes from the upstream's answer: for streams the
proxy asks for ``stream_options.include_usage`` and drops that extra chunk again when the caller
did not ask for it. Upstream 5xx, connection failures and malformed answers (a body that is not
JSON, ``usage`` counts that are not non-negative integers) answer 502, timeouts 504; a 4xx keeps its
status but gets our own error body: an upstream's body and headers never reach the caller (one that
echoes the ``Authorization`` it got would hand out the upstream key). ``traceparent`` goes
upstream; of the caller's ``baggage`` and ``tracestate`` only the entries named by
``forward_baggage_keys`` / ``forward_tracestate_keys`` do (none by default; baggage as the
configured propagators extracted it, within W3C's size limits). The upstream URL is shown without
its credentials everywhere (readiness, error bodies, spans). A stream that ends without its
``[DONE]``, or is cut, is an error to the caller (an SSE error event) and to the gateway
(``RequestContext.error_type``); a caller that leaves mid-stream is not. A stream without the
upstream's usage (cut, or an upstream that ignores ``include_usage``) is charged the prompt estimate.

aiohttp is the client by measurement (``bench/gateway.py``; STYLE: ~3,650 vs ~650 req/s for httpx
as a bare proxy on this machine).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import orjson
from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.trace import TraceState
from starlette.responses import Response

from gpt_observatory.serving_hooks import _errors
from gpt_observatory.serving_hooks._openai import ChatCompletionRequest, ChunkWriter
from gpt_observatory.serving_hooks.backends._streaming import Departure, EventStream
from gpt_observatory.serving_hooks.backends.base import Call, ModelBackend, Readiness, bytes_per_token_estimate
from gpt_observatory.serving_hooks.inference import GenAIHooks, GenAIRequest, Generation, GenerationStats
from gpt_observatory.telemetry.redact import without_credentials
from gpt_observatory.telemetry.settings import ConfigError

_MAX_COUNT = 1 << 31  # a token count above this is not a count


class Malformed(ValueError):
    """The upstream's answer is not a valid OpenAI answer."""


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
        request = call.request
        chat = isinstance(request, ChatCompletionRequest)
        captured = None
        if self.hooks.capture_content:
            captured = [m.model_dump(exclude_none=True) for m in request.messages] if chat else request.prompt
        genai = GenAIRequest(
            call.operation, request.model, request.limit(), request.temperature, request.top_p, request.stream, captured
        )
        gen = self.hooks.generation(genai, None, call.ctx)
        headers = self._headers()
        self._trace_headers(gen, headers)
        strip_usage = request.stream and not request.include_usage
        body = call.raw
        if strip_usage:
            fields = dict(call.ctx.json) if call.ctx is not None and call.ctx.json is not None else orjson.loads(body)
            fields["stream_options"] = {**(fields.get("stream_options") or {}), "include_usage": True}
            body = orjson.dumps(fields)
        url = self.base_url + ("/chat/completions" if chat else "/completions")
        try:
            try:
                resp = await self._http.post(url, data=body, headers=headers)
            except (TimeoutError, aiohttp.ClientError) as e:
                raise self._failed(gen, e, f"calling {self.base_url}") from None
            if resp.status != 200:
                response = await self._not_ok(resp, gen)
                gen.end()
                return response
            if not request.stream:
                response = await self._complete(resp, gen, chat)
                gen.end()
                return response
        except BaseException as e:
            gen.end(e)
            raise
        return EventStream(lambda departure: self._relay(resp, gen, strip_usage, call, departure))

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

    def _trace_headers(self, gen: Generation, headers: dict[str, str]) -> None:
        """``traceparent`` of the CLIENT span, and the caller's baggage and tracestate entries named to pass."""
        context = gen.context()
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
        try:
            await resp.read()  # drained and dropped (never shown): the connection goes back to the pool
        except (aiohttp.ClientError, TimeoutError):
            pass
        finally:
            resp.release()
        gen.fail(str(resp.status))
        if resp.status >= 500 or resp.status < 400:
            raise _errors.upstream_failed(f"HTTP {resp.status} from {self.base_url}")
        error = _errors.upstream_refused(resp.status, resp.headers.get("retry-after"))
        headers = {k.decode(): v.decode() for k, v in error.headers}
        return Response(error.body(), status_code=error.status, headers=headers, media_type="application/json")

    async def _complete(self, resp: aiohttp.ClientResponse, gen: Generation, chat: bool) -> Response:
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
            gen.record(_stats(answer, self.hooks.capture_content, chat))
        except (orjson.JSONDecodeError, Malformed, AttributeError, TypeError) as e:
            gen.fail("malformed_response")
            reason = e.args[0] if isinstance(e, Malformed) else "not JSON"
            raise _errors.upstream_failed(f"malformed answer from the upstream ({reason})") from None
        return Response(data, media_type="application/json")  # checked JSON: never the upstream's content type

    async def _relay(
        self, resp: aiohttp.ClientResponse, gen: Generation, strip_usage: bool, call: Call, departure: Departure
    ) -> AsyncIterator[bytes]:
        ctx = call.ctx
        stats = GenerationStats()
        error: BaseException | None = None
        failure: str | None = None
        done = False
        buffer = b""
        try:
            async for data in resp.content.iter_any():
                buffer += data
                if b"\n\n" not in buffer:
                    continue
                *events, buffer = buffer.split(b"\n\n")
                for i, ev in enumerate(events):
                    if ev.startswith(b"data: [DONE]"):  # the end: whatever follows it is not relayed
                        events, done = events[: i + 1], True
                        break
                out = [ev for ev in events if ev and self._inspect(ev, gen, stats, strip_usage)]
                if out:
                    yield b"\n\n".join(out) + b"\n\n"
                if done:
                    break
            if not done:  # ended without [DONE]: cut or truncated
                failure = "stream_truncated"
                yield ChunkWriter.error("the upstream ended the stream before it finished", "upstream_error")
        except Malformed as e:
            failure = "malformed_response"
            yield ChunkWriter.error(f"malformed chunk from the upstream ({e.args[0]})", "upstream_error")
        except TimeoutError:
            failure = "timeout"
            yield ChunkWriter.error(f"upstream stalled for {self.timeout_s:g} s", "upstream_timeout")
        except aiohttp.ClientError as e:
            failure = type(e).__qualname__
            yield ChunkWriter.error("upstream connection failed mid-stream", "upstream_error")
        except BaseException as e:  # cancelled: the client left (not an error of ours) or the server stops
            if not departure.gone:
                error = e
                failure = type(e).__qualname__
            raise
        finally:
            resp.release()
            if failure is not None:
                if error is None:
                    gen.fail(failure)
                if ctx is not None:
                    ctx.error_type = failure
            if stats.input_tokens is None:  # no usage from the upstream: the prompt reached it all the same
                stats.input_tokens = bytes_per_token_estimate(_body(call))
            gen.record(stats)
            gen.end(error)

    @staticmethod
    def _inspect(event: bytes, gen: Generation, stats: GenerationStats, strip_usage: bool) -> bool:
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
        choices = _choices(chunk, required=False)
        if stats.response_id is None:
            stats.response_id = _text(chunk, "id") or ""
            stats.response_model = _text(chunk, "model")
        for choice in choices:
            reason = _text(choice, "finish_reason")
            if reason:
                stats.finish_reasons = (*stats.finish_reasons, reason)
        usage = chunk.get("usage")
        if usage is not None:
            if not isinstance(usage, dict):
                raise Malformed("usage is not an object")
            stats.input_tokens = _count(usage, "prompt_tokens")
            stats.output_tokens = _count(usage, "completion_tokens")
            if not choices:
                return not strip_usage
        gen.token()
        return True


def _body(call: Call) -> Mapping[str, Any]:
    """The request body as JSON (parsed by the gateway when it is in front)."""
    if call.ctx is not None and call.ctx.json is not None:
        return call.ctx.json
    return orjson.loads(call.raw)


def _count(usage: dict[str, Any], key: str) -> int | None:
    """``usage[key]`` when it is a non-negative integer count (absent: None); :class:`Malformed` otherwise."""
    value = usage.get(key)
    if value is None:
        return None
    if type(value) is not int or not 0 <= value < _MAX_COUNT:
        raise Malformed(f"usage.{key} is not a non-negative integer")
    return value


def _text(data: dict[str, Any], key: str) -> str | None:
    """``data[key]`` when it is a string or absent/null (None); :class:`Malformed` otherwise."""
    value = data.get(key)
    if value is None or type(value) is str:
        return value
    raise Malformed(f"{key} is not a string")


def _choices(data: dict[str, Any], *, required: bool) -> list[dict[str, Any]]:
    """``data["choices"]``, a list of objects (non-empty when ``required``); :class:`Malformed` otherwise."""
    choices = data.get("choices")
    if choices is None and not required:
        return []
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices) or (required and not choices):
        raise Malformed("choices is not a list of objects")
    return choices


def _answer(data: dict[str, Any], chat: bool) -> None:
    """Check that ``data`` is a completion: each choice has a message object (chat) or a text string."""
    for choice in _choices(data, required=True):
        if chat:
            message = choice.get("message")
            if not isinstance(message, dict):
                raise Malformed("choice without a message object")
            _text(message, "content")
        elif type(choice.get("text")) is not str:
            raise Malformed("choice without a text string")


def _stats(data: dict[str, Any], capture: bool, chat: bool = True) -> GenerationStats:
    _answer(data, chat)
    usage = data.get("usage") or {}
    if not isinstance(usage, dict):
        raise Malformed("usage is not an object")
    choices = data["choices"]
    reasons = tuple(r for c in choices if (r := _text(c, "finish_reason")))
    completion = None
    if capture:
        first = choices[0]
        completion = first["message"].get("content") if chat else first["text"]
    return GenerationStats(
        _count(usage, "prompt_tokens"), _count(usage, "completion_tokens"), reasons, _text(data, "id"),
        _text(data, "model"), completion,
    )
