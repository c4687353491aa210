"""The gateway middleware in front of a plain ASGI app, through real uvicorn: one SERVER span per
request continuing the caller's trace, HTTP metrics, size and JSON checks, auth refusals,
metering of the tokens the app reports, and streaming that stays streaming."""

from __future__ import annotations

import asyncio
import base64
import json
import threading

import httpx
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from gpt_observatory.serving_hooks.auth import Authenticator, AuthSettings
from gpt_observatory.serving_hooks.gateway import GatewayConfig, GatewayMiddleware, request_context
from gpt_observatory.telemetry import names
from tests.serving_hooks.support import by_name, point_value, serve, settle, spans_of

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
ROUTES = frozenset({"/v1/echo", "/v1/stream", "/v1/boom", "/v1/chat/completions"})


class EchoApp:
    """A raw ASGI app: ``/v1/echo`` reports usage from the JSON body it gets; ``/v1/stream`` sends one
    chunk, waits until the test says so, then sends the second; ``/v1/boom`` raises."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        path = scope["path"]
        if path == "/v1/boom":
            raise RuntimeError("boom")
        if path == "/v1/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
            await asyncio.to_thread(self.release.wait, 10)
            await send({"type": "http.response.body", "body": b"second\n"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        status = 404
        answer: dict = {}
        if path in ("/v1/echo", "/healthz"):
            status = 200
            ctx = request_context(scope)
            if ctx is not None:
                data = json.loads(body) if body else {}
                ctx.record_usage(data.get("in", 0), data.get("out", 0))
                answer = {"tenant": ctx.tenant, "bytes": len(body), "parsed": ctx.json}
        elif path == "/v1/chat/completions":  # what the gateway validated, as the endpoint would reuse it
            status = 200
            request = request_context(scope).request
            answer = {"type": type(request).__name__, "n": request.n, "completions": request.completions}
        payload = json.dumps(answer).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture
def app():
    return EchoApp()


@pytest.fixture
def gateway(memory_telemetry, app):
    """The gateway (no auth) in front of :class:`EchoApp`, 1 KiB body limit."""
    config = GatewayConfig(max_request_bytes=1024, routes=ROUTES)
    with serve(GatewayMiddleware(app, config), lifespan="off") as served:
        yield served


def test_excluded_paths_return_before_a_span_starts(gateway, memory_telemetry):
    assert httpx.get(gateway.url + "/healthz").status_code == 200
    assert memory_telemetry.memory.spans() == []


def test_one_server_span_continues_the_callers_trace(gateway, memory_telemetry):
    r = httpx.post(gateway.url + "/v1/echo", json={"in": 3, "out": 4}, headers={"traceparent": TRACEPARENT})
    assert r.status_code == 200
    assert r.json()["parsed"] == {"in": 3, "out": 4}  # the body reached the app after the gateway read it

    settle(memory_telemetry)
    [span] = spans_of(memory_telemetry.memory.spans(), int(TRACE_ID, 16))
    assert span.name == "POST /v1/echo"
    assert span.kind is SpanKind.SERVER
    assert span.parent is not None and span.parent.span_id == int(PARENT_ID, 16) and span.parent.is_remote
    assert span.attributes[names.HTTP_ROUTE] == "/v1/echo"
    assert span.attributes[names.HTTP_RESPONSE_STATUS_CODE] == 200
    assert span.attributes[names.TENANT] == "anonymous"

    metrics = memory_telemetry.memory.metrics()
    duration = metrics[names.HTTP_SERVER_REQUEST_DURATION.name]
    assert point_value(duration, **{names.HTTP_ROUTE: "/v1/echo", names.HTTP_RESPONSE_STATUS_CODE: 200}) == 1
    assert tuple(duration[0].explicit_bounds) == names.HTTP_DURATION_BUCKETS
    assert point_value(metrics[names.HTTP_SERVER_ACTIVE_REQUESTS.name]) == 0
    tokens = metrics[names.GATEWAY_TOKENS.name]
    assert point_value(tokens, **{names.TENANT: "anonymous", names.GEN_AI_TOKEN_TYPE: "input"}) == 3
    assert point_value(tokens, **{names.TENANT: "anonymous", names.GEN_AI_TOKEN_TYPE: "output"}) == 4
    assert point_value(metrics[names.GATEWAY_REQUESTS.name], **{names.TENANT: "anonymous"}) == 1


def test_paths_without_a_route_are_named_by_method_only(gateway, memory_telemetry):
    assert httpx.get(gateway.url + "/v1/nothing-here/12345").status_code == 404
    settle(memory_telemetry)
    [span] = memory_telemetry.memory.spans()
    assert span.name == "GET"
    assert names.HTTP_ROUTE not in span.attributes


def test_any_method_is_a_label_from_the_closed_set_and_the_span_keeps_the_original(gateway, memory_telemetry):
    webdav = ["PROPFIND", "MKCOL", "LOCK", "UNLOCK", "PURGE", "SEARCH", "REPORT", "MOVE", "COPY"]  # the parser knows
    for method in webdav:
        httpx.request(method, gateway.url + "/v1/echo")
    httpx.get(gateway.url + "/v1/echo")
    settle(memory_telemetry)
    points = memory_telemetry.memory.metrics()[names.HTTP_SERVER_REQUEST_DURATION.name]
    assert {p.attributes[names.HTTP_REQUEST_METHOD] for p in points} == {"GET", "_OTHER"}
    odd = [s for s in memory_telemetry.memory.spans() if s.name == "HTTP /v1/echo"]
    assert sorted(s.attributes[names.HTTP_REQUEST_METHOD_ORIGINAL] for s in odd) == sorted(webdav)


def test_streaming_responses_are_not_buffered(gateway, app):
    with httpx.stream("GET", gateway.url + "/v1/stream", timeout=10) as r:
        lines = r.iter_lines()
        assert next(lines) == "first"  # arrives while the app still holds the second chunk back
        app.release.set()
        assert next(lines) == "second"


def test_too_large_bodies_are_refused_by_length_and_by_count(gateway, app, memory_telemetry):
    r = httpx.post(gateway.url + "/v1/echo", content=b"x" * 2048, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: the gateway counts the bytes as they arrive
        for _ in range(8):
            yield b"x" * 200

    r = httpx.post(gateway.url + "/v1/echo", content=chunked())
    assert r.status_code == 413
    assert app.calls == 0
    settle(memory_telemetry)
    rejected = memory_telemetry.memory.metrics()[names.GATEWAY_REJECTIONS.name]
    assert point_value(rejected, **{names.REJECTION_REASON: "too_large"}) == 2


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2, 3]", b"\xff\xfe"])
def test_malformed_json_is_a_400_in_openai_shape(gateway, app, memory_telemetry, body):
    r = httpx.post(gateway.url + "/v1/echo", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["type"] == "invalid_request_error"
    assert app.calls == 0
    settle(memory_telemetry)
    rejected = memory_telemetry.memory.metrics()[names.GATEWAY_REJECTIONS.name]
    assert point_value(rejected, **{names.REJECTION_REASON: "bad_request"}) == 1


def test_an_app_failure_is_a_500_span_with_its_error_type(gateway, memory_telemetry):
    assert httpx.post(gateway.url + "/v1/boom", json={}).status_code == 500
    settle(memory_telemetry)
    [span] = [s for s in memory_telemetry.memory.spans() if s.name == "POST /v1/boom"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[names.ERROR_TYPE] == "RuntimeError"


class CountingAuthenticator:
    """Admits everyone as tenant acme; counts the scope lookups and the authentications it was asked for."""

    def __init__(self) -> None:
        self.scope_lookups: list[str | None] = []
        self.calls = 0

    def scopes_for(self, model: str | None) -> tuple[str, ...]:
        self.scope_lookups.append(model)
        return ()

    async def authenticate(self, authorization, required_scopes=(), client=None):
        from gpt_observatory.serving_hooks.auth import Principal

        self.calls += 1
        return Principal(subject_hash="s", tenant="acme", scopes=frozenset(), method="api_key")


def test_completion_bodies_are_validated_bounded_and_held_to_the_catalog_before_anything_reads_them(
    memory_telemetry, app
):
    auth = CountingAuthenticator()
    config = GatewayConfig(routes=ROUTES, scopes_for=auth.scopes_for, models=frozenset({"tiny-gpt"}), max_n=4)
    messages = [{"role": "user", "content": "hi"}]
    with serve(GatewayMiddleware(app, config, authenticator=auth), lifespan="off") as gw:
        url = gw.url + "/v1/chat/completions"
        refused = [httpx.post(url, json=body) for body in (
            {"model": "tiny-gpt", "messages": 5},  # was a 500: iterated before validation
            {"model": ["tiny-gpt"], "messages": messages},
            {"model": "tiny-gpt", "messages": messages, "n": 5},
            {"model": "gpt-17", "messages": messages},
        )]
        ok = httpx.post(url, json={"model": "tiny-gpt", "messages": messages, "n": 2, "best_of": 3})
    assert [(r.status_code, r.json()["error"]["code"]) for r in refused] == [
        (400, "invalid_request"), (400, "invalid_request"), (400, "integer_above_max_value"), (404, "model_not_found"),
    ]
    assert refused[2].json()["error"]["message"] == "n must be at most 4 (OBSERVATORY_SERVE_MAX_N)"
    assert ok.json() == {"type": "ChatCompletionRequest", "n": 2, "completions": 3}
    assert (app.calls, auth.calls, auth.scope_lookups) == (1, 1, ["tiny-gpt"])  # nothing else got past the gateway
    settle(memory_telemetry)
    rejected = memory_telemetry.memory.metrics()[names.GATEWAY_REJECTIONS.name]
    assert point_value(rejected, **{names.REJECTION_REASON: "bad_request"}) == 3
    assert point_value(rejected, **{names.REJECTION_REASON: "not_found"}) == 1


def test_auth_refusals_stop_at_the_gateway(memory_telemetry, app, keyring):
    auth = Authenticator(AuthSettings(api_keys_file=keyring.path, model_scopes={"tiny-gpt": ("inference",)}))
    config = GatewayConfig(routes=ROUTES, scopes_for=auth.scopes_for)
    with serve(GatewayMiddleware(app, config, authenticator=auth), lifespan="off") as gw:
        url = gw.url + "/v1/echo"
        missing = httpx.post(url, json={"model": "tiny-gpt"})
        forged = "Bearer obs_000000000000_" + "A" * 43
        unknown = httpx.post(url, json={"model": "tiny-gpt"}, headers={"authorization": forged})
        scope = httpx.post(url, json={"model": "tiny-gpt"}, headers={"authorization": f"Bearer {keyring.globex}"})
        ok = httpx.post(url, json={"model": "tiny-gpt", "in": 2}, headers={"authorization": f"Bearer {keyring.acme}"})

    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "missing")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (401, "unknown_key")
    assert (scope.status_code, scope.json()["error"]["code"]) == (403, "insufficient_scope")
    assert ok.status_code == 200 and ok.json()["tenant"] == "acme"
    assert app.calls == 1

    settle(memory_telemetry)
    spans = memory_telemetry.memory.spans()
    server = [s for s in spans if s.kind is SpanKind.SERVER]
    assert len(server) == 4
    for s in server:  # each auth.verify is a child of its request's gateway span
        verify = by_name(spans_of(spans, s.context.trace_id), names.SPAN_AUTH_VERIFY)
        assert verify.parent.span_id == s.context.span_id
    rejected = memory_telemetry.memory.metrics()[names.GATEWAY_REJECTIONS.name]
    assert point_value(rejected, **{names.REJECTION_REASON: "auth"}) == 2
    assert point_value(rejected, **{names.REJECTION_REASON: "forbidden"}) == 1
    requests = memory_telemetry.memory.metrics()[names.GATEWAY_REQUESTS.name]
    assert point_value(requests, **{names.TENANT: "acme", names.HTTP_RESPONSE_STATUS_CODE: 200}) == 1


def test_a_refusal_says_what_to_fix_and_never_echoes_the_credential(app, keyring):
    auth = Authenticator(AuthSettings(api_keys_file=keyring.path, model_scopes={"tiny-gpt": ("inference",)}))
    config = GatewayConfig(routes=ROUTES, scopes_for=auth.scopes_for)
    basic = base64.b64encode(b"alice:secret").decode()
    forged = "obs_000000000000_" + "A" * 43
    jwt_like = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    cases = [  # (Authorization, status, code, the hint the body must carry, the credential it must not)
        (f"Basic {basic}", 401, "malformed", "use the Bearer scheme", basic),
        (f"Bearer {forged}", 401, "unknown_key", "API key is not known", forged),
        (f"Bearer {jwt_like}", 401, "unknown_key", "this gateway accepts no JWTs", jwt_like),
        (f"Bearer {keyring.globex}", 403, "insufficient_scope", "credential lacks scope(s): inference", keyring.globex),
    ]
    with serve(GatewayMiddleware(app, config, authenticator=auth), lifespan="off") as gw:
        answers = [httpx.post(gw.url + "/v1/echo", json={"model": "tiny-gpt"}, headers={"authorization": header})
                   for header, *_ in cases]

    for answer, (_, status, code, hint, credential) in zip(answers, cases, strict=True):
        error = answer.json()["error"]
        assert (answer.status_code, error["code"]) == (status, code)
        refused = "authentication failed" if status == 401 else "forbidden"
        assert error["message"].startswith(f"{refused}: {code}: {hint}"), error
        for text in (answer.text, answer.headers["www-authenticate"]):
            assert credential not in text and credential[-20:] not in text
    assert app.calls == 0
