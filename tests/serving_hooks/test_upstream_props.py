"""Property-based: whatever an upstream answers (status, headers, body, ``usage``, SSE framing), the
caller gets our answer or our error, never a 500 of ours, never the upstream's key, password or
body, and telemetry never counts a negative token.

A scripted upstream (aiohttp, on loopback) answers each request with what hypothesis drew; one
gateway proxies to it for all the examples of a run, so the run also checks that nothing a bad
answer leaves behind (a half-read connection, a stuck stream) spoils the next request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
from dataclasses import dataclass, field

import httpx
import orjson
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.telemetry import names
from tests.serving_hooks.support import assert_no_secrets, exported_text, serve, settle
from tests.serving_hooks.test_proxy import UPSTREAM_KEY, settings_for

PASSWORD = "upstream-pass-9f8e7d6c"
BASIC = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()  # what the gateway sends upstream
LEAKS = (f"Bearer {UPSTREAM_KEY}", BASIC, f"user:{PASSWORD}", "upstream-body-marker")
EXAMPLES = int(os.environ.get("OBSERVATORY_TEST_EXAMPLES", "150"))  # more for a longer hunt
OUR_ERROR_TYPES = {"upstream_error", "invalid_request_error", "authentication_error", "permission_error",
                   "rate_limit_error", "not_found_error", "server_error"}


@dataclass
class Script:
    status: int = 200
    content_type: str = "application/json"
    body: bytes = b"{}"
    chunks: list[bytes] = field(default_factory=list)  # streamed when non-empty


class ScriptedUpstream:
    """Answers every completion request with ``script`` (set by the test before each request)."""

    def __init__(self) -> None:
        self.script = Script()
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.complete)
        self.app.router.add_get("/v1/models", self.models)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scripted-upstream", daemon=True)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "x"}]})

    async def complete(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        s = self.script
        headers = {"content-type": s.content_type, "x-upstream-secret": LEAKS[0]} if s.content_type else {
            "x-upstream-secret": LEAKS[0]}
        if not s.chunks:
            return web.Response(status=s.status, body=s.body, headers=headers)
        resp = web.StreamResponse(status=s.status, headers=headers)
        await resp.prepare(request)
        for chunk in s.chunks:
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.2)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        assert self._ready.wait(10), "the scripted upstream did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# ------------------------------------------------------------------ what an upstream may answer
def dumps(value: object) -> bytes:
    """JSON as an upstream might write it: integers of any size, NaN and Infinity included."""
    return json.dumps(value).encode()


# The leaks go in what must never pass (error bodies, bytes that are not JSON, a header); a completion's
# own text is the caller's to read, so the JSON values of well-formed answers carry none.
counts = st.one_of(st.integers(0, 10_000), st.integers(min_value=-(10**30), max_value=10**30), st.floats(),
                   st.text(max_size=5), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
usage = st.one_of(st.none(), st.fixed_dictionaries(
    {}, optional={"prompt_tokens": counts, "completion_tokens": counts, "total_tokens": counts}))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
message = st.fixed_dictionaries({"role": st.just("assistant")},
                                optional={"content": st.one_of(st.text(max_size=30), json_values)})
choice = st.fixed_dictionaries({}, optional={
    "index": st.one_of(st.integers(-2, 3), json_values), "message": st.one_of(message, json_values),
    "finish_reason": st.one_of(st.sampled_from(["stop", "length"]), json_values)})
completion = st.fixed_dictionaries({"object": st.just("chat.completion")}, optional={
    "id": st.one_of(st.text(max_size=10), json_values), "model": st.text(max_size=10),
    "choices": st.one_of(st.lists(choice, max_size=2), json_values), "usage": st.one_of(usage, json_values)})
delta = st.fixed_dictionaries({}, optional={"content": st.one_of(st.text(max_size=10), json_values)})
chunk = st.fixed_dictionaries({"object": st.just("chat.completion.chunk")}, optional={
    "choices": st.one_of(st.lists(st.fixed_dictionaries({"index": st.just(0), "delta": delta}, optional={
        "finish_reason": st.one_of(st.none(), st.just("stop"), json_values)}), max_size=2), json_values),
    "usage": st.one_of(usage, json_values)})
statuses = st.one_of(st.just(200), st.sampled_from([201, 204, 301, 400, 401, 403, 404, 409, 413, 422, 429,
                                                    500, 502, 503, 504, 599]))
content_types = st.sampled_from(["application/json", "text/event-stream", "text/html", "",
                                 "application/json; charset=utf-8", "application/octet-stream"])
bodies = st.one_of(completion.map(dumps), json_values.map(dumps), st.binary(max_size=200),
                   st.sampled_from(LEAKS).map(str.encode), st.just(b""),
                   st.sampled_from(LEAKS).map(lambda t: dumps({"error": {"message": t, "type": t}})))
events = st.one_of(
    chunk.map(lambda c: b"data: " + dumps(c) + b"\n\n"),
    st.just(b"data: [DONE]\n\n"),
    st.just(b": keep-alive\n\n"),
    json_values.map(lambda v: b"data: " + dumps(v) + b"\n\n"),
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda t: f"data: {t}\n\n".encode()),
    st.sampled_from(LEAKS).map(lambda t: f"data: {t}\n\n".encode()),
    st.sampled_from([b"data: {\"choices\": [", b"\n", b"data:", b"event: error\n", b"\r\n\r\n"]),
)
scripts = st.builds(Script, status=statuses, content_type=content_types, body=bodies,
                    chunks=st.one_of(st.just([]), st.lists(events, min_size=1, max_size=8)))


def test_no_upstream_answer_makes_a_500_or_reaches_the_caller(memory_telemetry, keyring):
    tried: list[tuple[int, int]] = []
    with ScriptedUpstream() as upstream:
        url = f"http://user:{PASSWORD}@127.0.0.1:{upstream.port}/v1"
        with serve(create_app(settings_for(url, keyring, model="m").model_copy(update={"upstream_api_key": None}))) as gw, httpx.Client(timeout=10) as client:

            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(script=scripts, stream=st.booleans())
            def exchange(script: Script, stream: bool) -> None:
                upstream.script = script
                body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": stream}
                answer = client.post(gw.v1 + "/chat/completions", json=body,
                                     headers={"authorization": f"Bearer {keyring.acme}"})
                tried.append((script.status, answer.status_code))
                seen = answer.text + repr(dict(answer.headers))
                for leak in (*LEAKS, PASSWORD, UPSTREAM_KEY):
                    assert leak not in seen, (leak, script)
                assert answer.status_code != 500, (answer.text, script)
                if answer.status_code >= 500:  # the upstream's failure, said in our words
                    assert answer.status_code in (502, 503, 504), script
                if answer.status_code != 200:
                    error = answer.json()["error"]
                    assert error["type"] in OUR_ERROR_TYPES and isinstance(error["message"], str), error
                    return
                if answer.headers["content-type"].startswith("text/event-stream"):
                    data = [line[5:].strip() for line in answer.text.splitlines() if line.startswith("data:")]
                    assert data, script
                    for item in data[:-1]:
                        assert isinstance(orjson.loads(item), dict), item
                    last = data[-1]
                    assert last == "[DONE]" or "error" in orjson.loads(last), (last, script)
                else:
                    assert answer.json()["object"] == "chat.completion"

            exchange()
            # Whatever the draws were, one answer that names a model of its own.
            upstream.script = Script(body=dumps({"object": "chat.completion", "model": "upstream-says-so", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}]}))
            named = client.post(gw.v1 + "/chat/completions", headers={"authorization": f"Bearer {keyring.acme}"},
                                json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
            assert named.status_code == 200 and named.json()["model"] == "upstream-says-so", named.text
        settle(memory_telemetry)

    print(f"\n{len(tried)} upstream answers tried; statuses returned: "
          f"{sorted({s for _, s in tried})}; 5xx of ours: 0")
    assert len(tried) >= EXAMPLES
    assert {s for _, s in tried} & {502}  # the run did exercise upstream failures
    text = exported_text(memory_telemetry)
    assert_no_secrets(text, [keyring.acme, UPSTREAM_KEY, PASSWORD])
    metrics = memory_telemetry.memory.metrics()
    assert all(p.value >= 0 for p in metrics.get(names.GATEWAY_TOKENS.name) or [])
    # What an upstream calls its model never becomes a label value outside the catalog.
    labels = {p.attributes.get(names.GEN_AI_RESPONSE_MODEL) for points in metrics.values() for p in points}
    assert labels <= {None, "m", names.MODEL_OTHER} and names.MODEL_OTHER in labels, labels
