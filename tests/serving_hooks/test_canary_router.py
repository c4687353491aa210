"""Canary routing in the gateway: the share, named tenants, stickiness, a missing challenger, and the
version and role on every span and metric (real app on real uvicorn, real API keys)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from gpt_observatory.serving_hooks._openai import ChatCompletionRequest
from gpt_observatory.serving_hooks.app import build_hooks, create_app
from gpt_observatory.serving_hooks.backends.base import Call
from gpt_observatory.serving_hooks.backends.canary import CanaryPolicy, CanaryRouter, bucket
from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
from gpt_observatory.serving_hooks.context import RequestContext
from gpt_observatory.serving_hooks.inference import ModelInfo
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.serving_hooks.echo_model import EchoModel
from tests.serving_hooks.support import serve, settle

MODEL = "echo"


def backends(settings, challenger: bool = True) -> tuple[InProcessBackend, InProcessBackend]:
    hooks = build_hooks(settings)
    champion = InProcessBackend(hooks, MODEL, model=EchoModel("a"), info=ModelInfo(MODEL, "1", "champion", "champion"))
    other = InProcessBackend(hooks, MODEL, role="challenger")
    if challenger:
        other.swap(EchoModel("b"), ModelInfo(MODEL, "2", "challenger", "challenger"))
    return champion, other


def call(tenant: str = "acme", user: str | None = None) -> Call:
    request = ChatCompletionRequest(model=MODEL, messages=[{"role": "user", "content": "hi"}], user=user)
    return Call(names.GEN_AI_OPERATION_CHAT, request, b"", RequestContext(tenant=tenant))


def side(router: CanaryRouter, c: Call) -> str:
    return router.select(c).role


def test_the_share_of_requests_goes_to_the_challenger():
    router = CanaryRouter(*backends(load(allow_anonymous=True)), CanaryPolicy.of(0.2))
    picks = [side(router, call()) for _ in range(20_000)]
    assert 0.18 < picks.count("challenger") / len(picks) < 0.22


def test_named_tenants_always_get_the_challenger_and_share_zero_sends_nobody_else():
    router = CanaryRouter(*backends(load(allow_anonymous=True)), CanaryPolicy.of(0.0, ["globex"]))
    assert {side(router, call("globex")) for _ in range(200)} == {"challenger"}
    assert {side(router, call("acme")) for _ in range(200)} == {"champion"}


@pytest.mark.parametrize("sticky", ["tenant", "session"])
def test_sticky_callers_stay_on_one_side_and_the_cohort_has_the_share(sticky):
    router = CanaryRouter(*backends(load(allow_anonymous=True)), CanaryPolicy.of(0.3, sticky=sticky))
    keys = [uuid.uuid4().hex for _ in range(4000)]

    def of(key: str) -> Call:
        return call(tenant=key) if sticky == "tenant" else call(user=key)

    first = {k: side(router, of(k)) for k in keys}
    assert all(side(router, of(k)) == first[k] for k in keys[:500] for _ in range(3))
    assert 0.27 < list(first.values()).count("challenger") / len(keys) < 0.33
    # The same key lands on the same side in every process: the bucket is a CRC-32, not hash().
    assert bucket("2", "acme") == bucket("2", "acme") != bucket("3", "acme")


def test_without_a_loaded_challenger_everything_goes_to_the_champion():
    router = CanaryRouter(*backends(load(allow_anonymous=True), challenger=False), CanaryPolicy.of(1.0, ["acme"]))
    assert {side(router, call("acme")) for _ in range(100)} == {"champion"}
    assert router.effective_share() == 0.0 and router.canary_status()["challenger"] is None


def test_every_span_and_metric_names_the_version_and_role(memory_telemetry, keyring):
    settings = load(api_keys_file=keyring.path, model=MODEL)
    router = CanaryRouter(*backends(settings), CanaryPolicy.of(0.5))
    with serve(create_app(settings, router=router)) as gw, httpx.Client(base_url=gw.v1, timeout=10) as client:
        headers = {"authorization": f"Bearer {keyring.acme}"}
        firsts = set()
        for i in range(40):
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                    "stream": i % 2 == 0}
            r = client.post("/chat/completions", json=body, headers=headers)
            assert r.status_code == 200
            firsts.add(r.text.split('"content":"', 2)[2][0] if body["stream"] else r.json()["choices"][0]["message"]
                       ["content"][0])
        ready = httpx.get(gw.url + "/readyz").json()
    assert firsts == {"a", "b"}
    assert ready["canary"]["share"] == 0.5 and ready["canary"]["challenger"]["version"] == "2"
    settle(memory_telemetry)
    expected = {("1", "champion"), ("2", "challenger")}
    spans = memory_telemetry.memory.spans()
    for kind in ("chat ", "POST "):
        seen = {(s.attributes[names.MODEL_VERSION], s.attributes[names.MODEL_ROLE]) for s in spans
                if s.name.startswith(kind)}
        assert seen == expected, kind
    metrics = memory_telemetry.memory.metrics()
    for metric in (names.GEN_AI_SERVER_REQUEST_DURATION, names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
                   names.GEN_AI_SERVER_TOKEN_USAGE, names.GEN_AI_OUTPUT_TOKENS):
        points = metrics[metric.name]
        assert {(p.attributes[names.MODEL_VERSION], p.attributes[names.MODEL_ROLE]) for p in points} == expected
