"""A fixed, local OpenAI-compatible server: the demo's fleet replicas, and the upstream peer the
proxy tests and the benches talk to (``tests/serving_hooks/upstream_peer.py`` re-exports it).

It answers at once (or ``delay_s`` later: a replica's generation time) with a fixed completion (streamed as ``max_tokens`` chunks when asked), and
misbehaves on request by model name: ``fail-500`` answers 500, ``bad-request`` answers 400,
``slow`` waits 5 s before answering, ``delay-1`` 1 s, ``stall`` streams one chunk and then stalls,
``echo-401`` answers 401 with the headers it got in its body, ``cut`` streams its ``max_tokens``
chunks and ends without its usage chunk or ``[DONE]`` (as a connection cut mid-stream would), ``string-usage`` and ``negative-usage`` report usage counts that are not counts, ``cached-V`` reports
``usage.prompt_tokens_details.cached_tokens`` as V read as JSON (``cached-3``: 3; ``cached--1``,
``cached-8`` past the prompt, ``cached-three`` a string: hostile ones). Every request's
headers and body are kept in ``seen`` (``GET /_seen`` over HTTP) so tests can check what the
gateway sent upstream. Run it alone with ``python -m gpt_observatory.demo.upstream --port P [--delay-ms D]``.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections import deque
from typing import Any

import orjson
from aiohttp import web

PROMPT_TOKENS = 7
TEXT = "hello from upstream"
STALL_S = 5.0  # "slow" and "stall" hold this long (the tests give the gateway a 0.5 s timeout)


def _usage(completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion_tokens,
            "total_tokens": PROMPT_TOKENS + completion_tokens}


def _bad_usage(model: str) -> dict[str, Any] | None:
    if model == "string-usage":
        return {"prompt_tokens": "7", "completion_tokens": "3", "total_tokens": "10"}
    if model == "negative-usage":
        return {"prompt_tokens": -1000, "completion_tokens": -5, "total_tokens": -1005}
    return None


def _cached(usage: dict[str, Any], model: str) -> dict[str, Any]:
    """``usage`` with the ``cached-V`` model's ``prompt_tokens_details`` (V as JSON, else as text)."""
    if not model.startswith("cached-"):
        return usage
    text = model.removeprefix("cached-")
    try:
        value: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = text
    return {**usage, "prompt_tokens_details": {"cached_tokens": value}}


class UpstreamPeer:
    """The aiohttp app plus, optionally, a thread serving it on loopback."""

    def __init__(self, keep: int = 1000, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.seen: deque[dict[str, Any]] = deque(maxlen=keep)
        self.app = web.Application()
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_post("/v1/chat/completions", self.complete)
        self.app.router.add_post("/v1/completions", self.complete)
        self.app.router.add_get("/_seen", self.seen_endpoint)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "up-model", "object": "model", "created": 0,
                                                               "owned_by": "peer"}]})

    async def seen_endpoint(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.seen))

    async def complete(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw)
        self.seen.append({"path": request.path, "headers": dict(request.headers), "body": body})
        model = body.get("model", "")
        chat = request.path.endswith("/chat/completions")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if model == "fail-500":
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        if model == "bad-request":
            return web.json_response(
                {"error": {"message": "unsupported", "type": "invalid_request_error", "code": "bad"}}, status=400
            )
        if model == "echo-401":
            return web.json_response({"error": {"message": dict(request.headers)}}, status=401)
        if model == "slow":
            await asyncio.sleep(STALL_S)
        if model == "delay-1":
            await asyncio.sleep(1.0)
        n = int(body.get("max_tokens") or 4)
        rid = "up-" + ("chat" if chat else "cmpl")
        if not body.get("stream"):
            choice = ({"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": TEXT, "finish_reason": "length"})
            return web.Response(
                body=orjson.dumps({"id": rid, "object": "chat.completion" if chat else "text_completion",
                                   "created": int(time.time()), "model": model, "choices": [choice],
                                   "usage": _cached(_bad_usage(model) or _usage(n), model)}),
                content_type="application/json",
            )
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        kind = "chat.completion.chunk" if chat else "text_completion"
        for i in range(n):
            piece = {"index": 0, "delta": {"content": f"t{i}"}, "finish_reason": None} if chat else {
                "index": 0, "text": f"t{i}", "finish_reason": None}
            last = i == n - 1
            if last:
                piece["finish_reason"] = "length"
            chunk = {"id": rid, "object": kind, "created": 0, "model": model, "choices": [piece]}
            if include_usage:
                chunk["usage"] = None
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            if model == "stall":
                await asyncio.sleep(STALL_S)
        if include_usage and model != "cut":
            usage = _cached(_bad_usage(model) or _usage(n), model)
            chunk = {"id": rid, "object": kind, "created": 0, "model": model, "choices": [], "usage": usage}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if model != "cut":
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # ------------------------------------------------------------------ serving in a thread
    def start(self, port: int = 0) -> UpstreamPeer:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.2)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", port)
            self._loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
            ready.set()
            self._loop.run_forever()
            pending = asyncio.all_tasks(self._loop)
            for task in pending:  # handlers still holding a "slow"/"stall" answer
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="upstream-peer", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the upstream peer did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> UpstreamPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="answer every completion this much later")
    args = parser.parse_args()
    # reuse_address: a replica restarted after a kill takes its port back at once
    web.run_app(UpstreamPeer(keep=10, delay_s=args.delay_ms / 1000).app, host="127.0.0.1", port=args.port,
                access_log=None, print=None, reuse_address=True)


if __name__ == "__main__":
    main()
