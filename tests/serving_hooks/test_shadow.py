"""Shadow traffic: copies of live requests go to the challenger after the champion answered; callers
only see the champion, a stuck challenger costs mirrors (counted) and never a user request, mirrors
are neither metered nor rate-limited, and the canary flow judges a challenger from shadow figures
alone (real app on real uvicorn, real API keys; the last test on real MLflow, Prefect and Prometheus)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpt_observatory.serving_hooks.app import build_hooks, create_app
from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
from gpt_observatory.serving_hooks.backends.shadow import ShadowPolicy, ShadowRouter
from gpt_observatory.serving_hooks.inference import ModelInfo
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests import components
from tests.flows.canary_support import Load, bootstrap_champion, gateway, readyz, register
from tests.flows.conftest import flows_env, prefect_server  # noqa: F401  # the canary flow's real Prefect server
from tests.serving_hooks.echo_model import EchoModel
from tests.serving_hooks.support import point_value, serve, settle

MODEL = "echo"
MAX_TOKENS = 5


class HangingModel(EchoModel):
    """A challenger that never answers until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__("h")
        self.release = threading.Event()

    def predict(self, model_input: Any) -> list[dict[str, Any]]:
        self.release.wait(30)
        return super().predict(model_input)


def shadow_router(settings, challenger_model: Any, policy: ShadowPolicy) -> ShadowRouter:
    hooks = build_hooks(settings)
    champion = InProcessBackend(hooks, MODEL, model=EchoModel("a"), info=ModelInfo(MODEL, "1", "champion", "champion"))
    challenger = InProcessBackend(hooks, MODEL, role="challenger", workers=policy.concurrency)
    challenger.swap(challenger_model, ModelInfo(MODEL, "2", "challenger", "challenger"))
    return ShadowRouter(champion, challenger, policy)


def ask(client: httpx.Client, key: str, stream: bool = False) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS, "stream": stream}
    return client.post("/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})


def content(r: httpx.Response) -> str:
    if r.headers["content-type"].startswith("text/event-stream"):
        return "".join(part.split('"', 1)[0] for part in r.text.split('"content":"')[1:])
    return r.json()["choices"][0]["message"]["content"]


def metric(handle: Any, m: names.Metric, **attrs: Any) -> float:
    return point_value(handle.memory.metrics().get(m.name, []), **attrs)


def wait_mirrored(handle: Any, n: int) -> None:
    components.wait_for(lambda: metric(handle, names.SHADOW_REQUEST_DURATION, **{names.MODEL_ROLE: "challenger"}) >= n,
                        10, what=f"{n} mirrors answered by the challenger")


def test_with_share_one_every_request_is_mirrored_and_callers_get_the_champion(memory_telemetry, keyring):
    settings = load(api_keys_file=keyring.path, model=MODEL)
    router = shadow_router(settings, EchoModel("b"), ShadowPolicy.of(1.0))
    n = 12
    with serve(create_app(settings, router=router)) as gw, httpx.Client(base_url=gw.v1, timeout=10) as client:
        answers = [ask(client, keyring.acme, stream=i % 2 == 0) for i in range(n)]
        ready = httpx.get(gw.url + "/readyz").json()
        wait_mirrored(memory_telemetry, n)
    assert [r.status_code for r in answers] == [200] * n
    assert {content(r) for r in answers} == {"abcde"}, "every caller got the champion's answer"
    assert ready["canary"]["source"] == "shadow" and ready["canary"]["challenger"]["version"] == "2"
    settle(memory_telemetry)
    for role, version in (("champion", "1"), ("challenger", "2")):
        side = {names.MODEL_ROLE: role, names.MODEL_VERSION: version}
        assert metric(memory_telemetry, names.SHADOW_REQUEST_DURATION, **side) == n
        assert metric(memory_telemetry, names.SHADOW_TIME_TO_FIRST_TOKEN, **side) == n / 2  # the streams
        assert metric(memory_telemetry, names.SHADOW_OUTPUT_TOKENS, **side) == n * MAX_TOKENS
    assert metric(memory_telemetry, names.SHADOW_COMPARISONS, **{names.SHADOW_MATCH: "differs"}) == n  # "b..." vs "a..."
    ratios = memory_telemetry.memory.metrics()[names.SHADOW_LENGTH_RATIO.name]
    assert sum(p.sum for p in ratios) == n  # same length: ratio 1 each
    spans = memory_telemetry.memory.spans()
    servers = {s.context.span_id: s for s in spans if s.name.startswith("POST ")}
    mirrors = [s for s in spans if s.name == names.SPAN_SHADOW]
    assert len(servers) == len(mirrors) == n
    for mirror in mirrors:
        assert mirror.attributes[names.SHADOW] is True and mirror.parent is None
        (link,) = mirror.links
        user = servers[link.context.span_id]  # linked to the user request's SERVER span, in a trace of its own
        assert mirror.context.trace_id != user.context.trace_id
        assert user.attributes[names.MODEL_ROLE] == "champion"
    chats = [s for s in spans if s.name.startswith("chat ") and s.attributes[names.MODEL_ROLE] == "challenger"]
    assert {s.context.trace_id for s in chats} == {s.context.trace_id for s in mirrors}
    assert all(s.attributes.get(names.SHADOW) is True for s in chats), "a mirrored generation is flagged"
    users = [s for s in spans if s.name.startswith("chat ") and s.attributes[names.MODEL_ROLE] == "champion"]
    assert len(users) == n and not any(names.SHADOW in s.attributes for s in users)


def test_a_hanging_challenger_fills_the_queue_mirrors_are_dropped_and_no_caller_waits(memory_telemetry, keyring):
    settings = load(api_keys_file=keyring.path, model=MODEL)
    hanging = HangingModel()
    router = shadow_router(settings, hanging, ShadowPolicy.of(1.0, queue_size=2, concurrency=1))
    n = 10
    try:
        with serve(create_app(settings, router=router)) as gw, httpx.Client(base_url=gw.v1, timeout=10) as client:
            answers = [ask(client, keyring.acme, stream=i % 2 == 1) for i in range(n)]
            pending = router.pending
            settle(memory_telemetry)
            dropped = metric(memory_telemetry, names.SHADOW_DROPPED, **{names.SHADOW_DROP_REASON: "queue_full"})
            hanging.release.set()
    finally:
        hanging.release.set()
    assert [r.status_code for r in answers] == [200] * n
    assert {content(r) for r in answers} == {"abcde"}
    # One mirror stuck in the challenger, two waiting, the rest dropped and counted.
    assert (pending, dropped) == (2, n - 3)
    requests = metric(memory_telemetry, names.GATEWAY_REQUESTS, **{names.TENANT: "acme"})
    assert requests == n


def test_mirrors_are_not_metered_against_the_tenant_nor_rate_limited(memory_telemetry, keyring):
    limit = 6
    settings = load(api_keys_file=keyring.path, model=MODEL, requests_per_minute=limit)
    router = shadow_router(settings, EchoModel("b"), ShadowPolicy.of(1.0))
    with serve(create_app(settings, router=router)) as gw, httpx.Client(base_url=gw.v1, timeout=10) as client:
        answers = [ask(client, keyring.acme, stream=i % 2 == 0) for i in range(limit)]
        wait_mirrored(memory_telemetry, limit)
        over = ask(client, keyring.acme)
    settle(memory_telemetry)
    # Every user request within the limit is served although each was mirrored; the next one is the limit's.
    assert [r.status_code for r in answers] == [200] * limit and over.status_code == 429
    acme = {names.TENANT: "acme"}
    assert metric(memory_telemetry, names.GATEWAY_REQUESTS, **acme, **{names.HTTP_RESPONSE_STATUS_CODE: 200}) == limit
    assert metric(memory_telemetry, names.GATEWAY_REQUESTS, **acme) == limit + 1
    output = {**acme, names.GEN_AI_TOKEN_TYPE: names.GEN_AI_TOKEN_TYPE_OUTPUT}
    assert metric(memory_telemetry, names.GATEWAY_TOKENS, **output) == limit * MAX_TOKENS  # the champion's only
    assert metric(memory_telemetry, names.SHADOW_OUTPUT_TOKENS, **{names.MODEL_ROLE: "challenger"}) == limit * MAX_TOKENS
    rejected = metric(memory_telemetry, names.GATEWAY_REJECTIONS, **{names.REJECTION_REASON: "rate_limit"})
    assert rejected == 1


def test_named_tenants_are_always_mirrored_the_share_of_the_rest_and_nothing_without_a_challenger():
    import asyncio

    from gpt_observatory.serving_hooks._openai import ChatCompletionRequest
    from gpt_observatory.serving_hooks.backends.base import Call
    from gpt_observatory.serving_hooks.context import RequestContext

    settings = load(allow_anonymous=True, model=MODEL)
    policy = ShadowPolicy.of(0.25, ["globex"])
    request = ChatCompletionRequest(model=MODEL, messages=[{"role": "user", "content": "hi"}])

    def mirrored(router: ShadowRouter, tenant: str, n: int) -> float:
        call = Call(names.GEN_AI_OPERATION_CHAT, request, b"", RequestContext(tenant=tenant))
        return sum(router.select(call) is not router.champion for _ in range(n)) / n

    async def shares(router: ShadowRouter) -> tuple[float, float]:
        await router.start()
        try:
            return mirrored(router, "globex", 200), mirrored(router, "acme", 20_000)
        finally:
            await router.close()

    globex, acme = asyncio.run(shares(shadow_router(settings, EchoModel("b"), policy)))
    assert globex == 1.0 and 0.23 < acme < 0.27
    hooks = build_hooks(settings)
    champion = InProcessBackend(hooks, MODEL, model=EchoModel("a"), info=ModelInfo(MODEL, "1", "champion", "champion"))
    unloaded = ShadowRouter(champion, InProcessBackend(hooks, MODEL, role="challenger"), policy)  # no alias
    assert asyncio.run(shares(unloaded)) == (0.0, 0.0)


def test_a_policy_outside_its_bounds_is_refused():
    with pytest.raises(ValueError, match="shadow share"):
        ShadowPolicy.of(1.5)
    with pytest.raises(ValueError, match="shadow traffic"):
        load(allow_anonymous=True, shadow_share=0.5, canary_share=0.5)


GARBAGE_MODEL = """
import mlflow.pyfunc
from mlflow.models import set_model


class Garbage(mlflow.pyfunc.PythonModel):
    # Rows that are no answer: no text, token counts that are not numbers, streams without text.
    def predict(self, context, model_input, params=None):
        return [{"text": None, "prompt_tokens": "many", "completion_tokens": "lots", "finish_reason": 7}
                for _ in range(len(model_input))]

    def predict_stream(self, context, model_input, params=None):
        yield {"junk": True}
        yield {"finish_reason": "length", "completion_tokens": "lots"}


set_model(Garbage())
"""


def register_garbage(tracking_uri: str, name: str, workdir: Path) -> str:
    import mlflow

    code = workdir / "garbage_model.py"
    code.write_text(GARBAGE_MODEL)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with mlflow.start_run(run_name="shadow test garbage"):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(code), registered_model_name=name)
    return str(info.registered_model_version)


def test_a_garbage_challenger_is_rejected_from_shadow_figures_alone_and_no_user_sees_it(
    tmp_path, mlflow_server, prefect_server  # noqa: F811
):
    from gpt_observatory.flows.canary import canary
    from gpt_observatory.flows.registry import CHALLENGER, CHAMPION, Registry
    from gpt_observatory.flows.stores import client_for

    model = f"shadow-{uuid.uuid4().hex[:8]}"
    first = register(mlflow_server.url, model, label="v1", delay_s=0.005)
    bootstrap_champion(mlflow_server.url, model, first)
    garbage = register_garbage(mlflow_server.url, model, tmp_path)
    settings = {"step_s": 1.0, "min_requests": 15, "max_error_rate": 0.05, "max_error_rate_increase": 0.02,
                "max_p95_duration_s": 5, "max_p95_ttft_s": 5, "latency_tolerance_s": 0.5, "guard_duration_s": 0,
                "canary_source": "shadow"}
    with (
        gateway(tmp_path, model, mlflow_server.url, "--shadow-share", "1.0") as url,
        components.prometheus(tmp_path / "prom", [url.removeprefix("http://")]) as prom,
    ):
        components.wait_for(lambda: (readyz(url).get("model") or {}).get("version") == first, 90, what="the champion")
        load = Load([url], model, threads=2, pause_s=0.02).start()
        try:
            out = canary(model_name=model, version=garbage, prometheus_url=prom.url, window_s=20,
                         canary_settings=settings, overrides={"tracking_uri": mlflow_server.url, "progress": False,
                                                              "retry_delay_s": 0.5, "lease_settle_s": 0.1})
            time.sleep(1)
        finally:
            load.stop()
        mirrored = httpx.get(url + "/metrics").text
    figures = out.decision.figures
    print(f"shadow canary: {out.decision.reason}; after {out.analysed_s:.1f}s; {len(load.answers)} user answers; "
          f"figures {({k: v for k, v in figures.items() if k != 'gates'})}")
    assert (out.verdict, out.decision.decision) == ("fail", "rejected"), out.decision.reason
    assert out.decision.reason.startswith("rejected on shadow traffic: ")  # the figures it judged, named
    assert "error rate" in out.decision.reason and figures["challenger_error_rate"] > settings["max_error_rate"]
    assert figures["champion_requests"] >= settings["min_requests"] and figures["champion_error_rate"] == 0
    registry = Registry(client_for(mlflow_server.url), model)
    assert (registry.alias(CHAMPION), registry.alias(CHALLENGER)) == (first, None)
    answers = load.answers
    assert answers and all(a.ok and a.label == "v1" for a in answers), [a for a in answers if a.label != "v1"][:3]
    assert names.SHADOW_REQUEST_DURATION.prometheus in mirrored
