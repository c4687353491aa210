"""Proxy an OpenAI-compatible server (vLLM, another gateway, ...).

Bodies pass through as sent; streams are relayed event by event as they arrive. The inference
CLIENT span's context goes upstream as ``traceparent``; the caller's credential never does (an
``upstream_api_key`` may). Usage for metering comes from the upstream's answer: for streams the
proxy asks for ``stream_options.include_usage`` and drops that extra chunk again when the caller
did not ask for it. Upstream 5xx and connection failures answer 502, timeouts 504; 4xx answers are
the caller's problem and pass through unchanged.

aiohttp is the client by measurement (``bench/gateway.py``; STYLE: ~3,650 vs ~650 req/s for httpx
as a bare proxy on this machine).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson
from opentelemetry import propagate
from starlette.responses import Response, StreamingResponse

from gpt_observatory.serving_hooks import _errors
from gpt_observatory.serving_hooks._openai import ChatCompletionRequest, ChunkWriter
from gpt_observatory.serving_hooks.backends.base import Call, ModelBackend, Readiness, bytes_per_token_estimate
from gpt_observatory.serving_hooks.inference import GenAIHooks, GenAIRequest, Generation, GenerationStats

_PASS_HEADERS = ("retry-after", "x-request-id")


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
    ) -> None:
        self.hooks = hooks
        self.base_url = base_url.rstrip("/")
        self.role = role
        self.timeout_s = timeout_s
        self._api_key = api_key
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
        propagate.inject(headers, context=gen.context())
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
                response = await self._complete(resp, gen)
                gen.end()
                return response
        except BaseException as e:
            gen.end(e)
            raise
        stream = self._relay(resp, gen, strip_usage)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"cache-control": "no-cache"})

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

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        return headers

    async def _not_ok(self, resp: aiohttp.ClientResponse, gen: Generation) -> Response:
        try:
            data = await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            data = b""
        finally:
            resp.release()
        gen.fail(str(resp.status))
        if resp.status >= 500:
            raise _errors.upstream_failed(f"HTTP {resp.status} from {self.base_url}")
        headers = {k: v for k in _PASS_HEADERS if (v := resp.headers.get(k)) is not None}
        media = resp.headers.get("content-type", "application/json")
        return Response(data, status_code=resp.status, headers=headers, media_type=media)

    async def _complete(self, resp: aiohttp.ClientResponse, gen: Generation) -> Response:
        try:
            data = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise self._failed(gen, e, "reading the answer") from None
        finally:
            resp.release()
        try:
            gen.record(_stats(orjson.loads(data), self.hooks.capture_content))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            pass  # not ours to judge: pass it through, unmetered
        return Response(data, media_type=resp.headers.get("content-type", "application/json"))

    async def _relay(self, resp: aiohttp.ClientResponse, gen: Generation, strip_usage: bool) -> AsyncIterator[bytes]:
        stats = GenerationStats()
        error: BaseException | None = None
        buffer = b""
        try:
            async for data in resp.content.iter_any():
                buffer += data
                if b"\n\n" not in buffer:
                    continue
                *events, buffer = buffer.split(b"\n\n")
                out = [ev for ev in events if ev and self._inspect(ev, gen, stats, strip_usage)]
                if out:
                    yield b"\n\n".join(out) + b"\n\n"
            if buffer.strip():
                yield buffer
        except TimeoutError:
            gen.fail("timeout")
            yield ChunkWriter.error(f"upstream stalled for {self.timeout_s:g} s", "upstream_timeout")
        except aiohttp.ClientError as e:
            gen.fail(type(e).__qualname__)
            yield ChunkWriter.error("upstream connection failed mid-stream", "upstream_error")
        except BaseException as e:
            error = e
            raise
        finally:
            resp.release()
            gen.record(stats)
            gen.end(error)

    @staticmethod
    def _inspect(event: bytes, gen: Generation, stats: GenerationStats, strip_usage: bool) -> bool:
        """Meter one SSE event; False drops it (the usage chunk the caller did not ask for)."""
        if not event.startswith(b"data:") or event.startswith(b"data: [DONE]"):
            return True
        first = stats.response_id is None
        usage = _has_value(event, b'"usage"')
        if first or usage or _has_value(event, b'"finish_reason"'):
            try:
                chunk = orjson.loads(event[5:])
            except orjson.JSONDecodeError:
                gen.token()
                return True
            if first:
                stats.response_id = chunk.get("id") or ""
                stats.response_model = chunk.get("model")
            for choice in chunk.get("choices") or ():
                if choice.get("finish_reason"):
                    stats.finish_reasons = (*stats.finish_reasons, choice["finish_reason"])
            if usage and isinstance(chunk.get("usage"), dict):
                stats.input_tokens = chunk["usage"].get("prompt_tokens")
                stats.output_tokens = chunk["usage"].get("completion_tokens")
                if not chunk.get("choices"):
                    return not strip_usage
        gen.token()
        return True


def _has_value(event: bytes, key: bytes) -> bool:
    """Whether ``key`` occurs in ``event`` with a non-null value (without parsing the JSON)."""
    at = event.find(key)
    if at < 0:
        return False
    rest = event[at + len(key):].lstrip(b": ")
    return not rest.startswith(b"null")


def _stats(data: dict[str, Any], capture: bool) -> GenerationStats:
    usage = data.get("usage") or {}
    choices = data.get("choices") or []
    reasons = tuple(c["finish_reason"] for c in choices if c.get("finish_reason"))
    completion = None
    if capture and choices:
        first = choices[0]
        completion = (first.get("message") or {}).get("content") if "message" in first else first.get("text")
    return GenerationStats(
        usage.get("prompt_tokens"), usage.get("completion_tokens"), reasons, data.get("id"), data.get("model"),
        completion,
    )
