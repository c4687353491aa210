"""Property-based: whatever a caller sends (body, headers, credential), the answer is a 2xx or our
OpenAI-style 4xx, never a 5xx; no credential comes back in a response, in stderr or in the
exported telemetry; and the limits hold (``n``, ``best_of``, ``max_tokens`` above their bounds are
refused, never served).

One gateway (API keys and a development IdP, rate limits on, the in-process echo model) takes all
the examples of a run, so what one hostile request leaves behind is seen by the next.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt_observatory.serving_hooks.app import build_hooks, create_app
from gpt_observatory.serving_hooks.backends.base import ModelRouter
from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
from gpt_observatory.serving_hooks.inference import ModelInfo
from gpt_observatory.serving_hooks.settings import load
from tests.serving_hooks.conftest import AUDIENCE
from tests.serving_hooks.echo_model import EchoModel
from tests.serving_hooks.support import assert_no_secrets, exported_text, serve, settle

EXAMPLES = int(os.environ.get("OBSERVATORY_TEST_EXAMPLES", "150"))
BOUNDS = {"n": 4, "best_of": 4, "max_tokens": 64, "max_completion_tokens": 64}
OUR_ERROR_TYPES = {"invalid_request_error", "authentication_error", "permission_error", "rate_limit_error",
                   "not_found_error"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
counts = st.one_of(st.integers(-2, 80), st.integers(min_value=-(10**40), max_value=10**40), st.floats(),
                   st.text(max_size=4), st.none(), st.booleans())
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                           "content": st.text(max_size=40)}),
    st.dictionaries(st.sampled_from(["role", "content", "name", "tool_calls"]), json_values, max_size=3),
    json_values,
)
hostile_fields = {  # each optional field of a request that is otherwise well formed, with any value
    "n": counts, "best_of": counts, "max_tokens": counts, "max_completion_tokens": counts,
    "stream": st.one_of(st.booleans(), json_values),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), json_values),
    "temperature": st.one_of(st.floats(-1, 3), json_values), "top_p": st.one_of(st.floats(0, 1), json_values),
    "user": st.one_of(st.text(max_size=20), json_values), "extra_field": json_values,
}
user_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                      "content": st.text(max_size=40)})
chat = st.fixed_dictionaries({"model": st.just("tiny-gpt"), "messages": st.lists(user_message, min_size=1, max_size=3)},
                             optional=hostile_fields)
completion = st.fixed_dictionaries({"model": st.just("tiny-gpt"), "prompt": st.text(max_size=40)},
                                   optional=hostile_fields)
anything = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.just("tiny-gpt"), st.text(max_size=30), json_values),
    "messages": st.one_of(st.lists(message, max_size=3), json_values),
    "prompt": st.one_of(st.text(max_size=40), st.lists(st.text(max_size=10), max_size=3), json_values),
    **hostile_fields,
})


def encode(body: dict) -> bytes:
    """JSON as a hostile client may write it: integers of any size, NaN and Infinity included."""
    return json.dumps(body).encode()


requests = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), chat.map(encode)),
    st.tuples(st.just("/v1/completions"), completion.map(encode)),
    st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
              st.one_of(anything.map(encode), json_values.map(encode), st.binary(max_size=100))),
)
header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
extra_headers = st.lists(st.tuples(st.one_of(header_names, st.sampled_from(
    ["content-type", "traceparent", "tracestate", "baggage", "authorization", "x-forwarded-for"])), header_values), max_size=4) | st.just([])


def test_no_request_gets_a_5xx_or_a_secret_back_and_no_bound_is_overdrawn(
    memory_telemetry, keyring, dev_idp, capfd, monkeypatch
):
    monkeypatch.setenv("OBSERVATORY_AUTH_THROTTLE_BY", "")  # every example comes from one address
    jwt = dev_idp.mint("props-user", tenant="acme", scopes=["inference"])
    credentials = st.sampled_from([keyring.acme, keyring.globex, jwt, keyring.acme + "x", jwt[:-4] + "AAAA",
                                   "", "not-a-token", "obs_" + "A" * 60])
    settings_ = load(api_keys_file=keyring.path, oidc_issuer=dev_idp.issuer, audience=AUDIENCE,
                     max_request_bytes=16 * 1024, requests_per_minute=100_000, tokens_per_minute=10_000_000,
                     max_n=BOUNDS["n"], max_best_of=BOUNDS["best_of"], max_tokens_limit=BOUNDS["max_tokens"])
    hooks = build_hooks(settings_)
    backend = InProcessBackend(hooks, "tiny-gpt", model=EchoModel(), info=ModelInfo("tiny-gpt", "1"))
    tried: list[int] = []
    reasons: Counter[str] = Counter()  # refusals by code, to show the run reached past validation
    with serve(create_app(settings_, router=ModelRouter({"champion": backend}))) as gw, \
            httpx.Client(base_url=gw.url, timeout=10) as client:

        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(request=requests, credential=credentials, headers=extra_headers,
               scheme=st.sampled_from(["Bearer ", "Bearer ", "bearer ", "Basic ", ""]))
        def exchange(request: tuple[str, bytes], credential: str, scheme: str, headers: list[tuple[str, str]]) -> None:
            path, body = request
            sent = [("content-type", "application/json"), ("authorization", scheme + credential), *headers]
            try:
                answer = client.post(path, content=body, headers=sent)
            except httpx.LocalProtocolError:  # a header httpx itself refuses to send (a bad content-length)
                return
            tried.append(answer.status_code)
            if answer.status_code >= 400:
                reasons[answer.json()["error"].get("code") or answer.json()["error"]["type"]] += 1
            assert answer.status_code < 500, (answer.status_code, answer.text, body, sent)
            text = answer.text + repr(dict(answer.headers))
            for secret in (keyring.acme, keyring.globex, jwt):
                assert secret not in text
            if answer.status_code >= 400:
                error = answer.json()["error"]
                assert error["type"] in OUR_ERROR_TYPES and isinstance(error["message"], str), error
                return
            served = json.loads(body)
            for field, bound in BOUNDS.items():
                value = served.get(field)
                assert not (type(value) is int and value > bound), (field, value)  # above its bound: never served

        exchange()
        ready = client.get("/readyz")
    settle(memory_telemetry)
    _, err = capfd.readouterr()
    summary = (f"{len(tried)} requests tried; statuses {sorted(Counter(tried).items())}; "
               f"5xx: {sum(s >= 500 for s in tried)}; refusals {reasons.most_common()}")
    with capfd.disabled():
        print("\n" + summary)
    assert len(tried) >= EXAMPLES * 0.8 and 200 in tried and 400 in tried and 401 in tried, summary
    assert_no_secrets(exported_text(memory_telemetry) + err + ready.text, [keyring.acme, keyring.globex, jwt])
