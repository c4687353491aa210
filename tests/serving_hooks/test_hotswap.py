"""The ``mlflow`` backend against a real MLflow server: it serves ``models:/NAME@champion``, follows
the alias to a new version under load without a failed request, and says ``degraded`` (still
serving) when the registry cannot be reached."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow import MlflowClient

from gpt_observatory.serving_hooks.app import build_hooks, create_app
from gpt_observatory.serving_hooks.backends.base import ModelRouter
from gpt_observatory.serving_hooks.backends.mlflow import MlflowBackend
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.components import free_port, wait_for
from tests.serving_hooks.support import serve, settle

ECHO_PYFUNC = Path(__file__).with_name("echo_pyfunc.py")


def register(server_url: str, name: str, label: str) -> str:
    """Log the echo model (answers start with ``label``) as a new version of ``name``; its version."""
    mlflow.set_tracking_uri(server_url)
    mlflow.set_registry_uri(server_url)  # registrations go to this server, whatever ran before
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(ECHO_PYFUNC), registered_model_name=name,
            model_config={"label": label, "delay_s": 0.002}, code_paths=None,
        )
    return str(info.registered_model_version)


@pytest.fixture
def champion(mlflow_server):
    """A fresh registered model whose ``champion`` is version 1 (label ``a``)."""
    name = f"echo-{uuid.uuid4().hex[:8]}"
    version = register(mlflow_server.url, name, "a")
    MlflowClient(mlflow_server.url).set_registered_model_alias(name, "champion", version)
    return name


def ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def test_the_champion_moves_under_load_without_a_failed_request(memory_telemetry, mlflow_server, champion, keyring):
    settings = load(model=champion, tracking_uri=mlflow_server.url, poll_interval_s=0.25, api_keys_file=keyring.path)
    with serve(create_app(settings)) as gw:
        wait_for(lambda: ready(gw.url), timeout=60, what="the champion to load")
        results: list[tuple[int, str]] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def load_loop(i: int) -> None:
            headers = {"authorization": f"Bearer {keyring.acme}"}
            with httpx.Client(base_url=gw.v1, headers=headers, timeout=30) as client:
                n = 0
                while not stop.is_set():
                    n += 1
                    try:
                        body = {"model": champion, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                                "stream": (i + n) % 2 == 0}
                        r = client.post("/chat/completions", json=body)
                        text = r.text if body["stream"] else r.json()["choices"][0]["message"]["content"]
                        first = text.split('"content":"', 2)[2][0] if body["stream"] else text[0]
                        results.append((r.status_code, first))
                    except BaseException as e:  # any failure counts
                        errors.append(e)

        workers = [threading.Thread(target=load_loop, args=(i,)) for i in range(4)]
        for w in workers:
            w.start()
        time.sleep(0.5)
        version = register(mlflow_server.url, champion, "b")
        MlflowClient(mlflow_server.url).set_registered_model_alias(champion, "champion", version)
        wait_for(lambda: any(first == "b" for _, first in results[-8:]), timeout=60, what="answers of version 2")
        time.sleep(0.5)
        stop.set()
        for w in workers:
            w.join(30)
        ready_now = httpx.get(gw.url + "/readyz").json()

    assert not errors, errors[:3]
    assert results and all(status == 200 for status, _ in results)
    firsts = [first for _, first in results]
    assert firsts[0] == "a" and firsts[-1] == "b"
    assert ready_now["model"]["version"] == version
    settle(memory_telemetry)
    spans = memory_telemetry.memory.spans()
    versions = [s.attributes[names.MODEL_VERSION] for s in spans if s.name.startswith("chat ")]
    assert set(versions) == {"1", version} and versions[-1] == version
    swaps = memory_telemetry.memory.metrics()[names.MODEL_SWAPS.name]
    assert {p.attributes[names.MODEL_VERSION] for p in swaps} == {"1", version}


def test_an_unreachable_registry_degrades_but_keeps_serving(memory_telemetry, mlflow_server, champion, keyring):
    settings = load(model=champion, tracking_uri=mlflow_server.url, poll_interval_s=0.2, api_keys_file=keyring.path)
    backend = MlflowBackend(build_hooks(settings), champion, tracking_uri=mlflow_server.url, poll_interval_s=0.2)
    with serve(create_app(settings, router=ModelRouter({"champion": backend}))) as gw:
        wait_for(lambda: ready(gw.url), timeout=60, what="the champion to load")
        backend.tracking_uri = f"http://127.0.0.1:{free_port()}"  # the registry goes away
        degraded = wait_for(
            lambda: (r := httpx.get(gw.url + "/readyz")).json()["status"] == "degraded" and r, timeout=10,
            what="readiness to say degraded",
        )
        answer = httpx.post(gw.v1 + "/completions", json={"model": champion, "prompt": "x", "max_tokens": 2},
                            headers={"authorization": f"Bearer {keyring.acme}"})
        backend.tracking_uri = mlflow_server.url
        wait_for(lambda: httpx.get(gw.url + "/readyz").json()["status"] == "ok", timeout=10, what="recovery")
    assert degraded.status_code == 200 and "did not answer" in degraded.json()["detail"]
    assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == "ab"
    assert memory_telemetry.memory.metrics()[names.MODEL_REGISTRY_ERRORS.name]


def test_no_model_yet_is_not_ready_and_answers_503(memory_telemetry, keyring):
    dead = f"http://127.0.0.1:{free_port()}"
    settings = load(model="tiny-gpt", tracking_uri=dead, poll_interval_s=0.2, api_keys_file=keyring.path)
    with serve(create_app(settings)) as gw:
        not_ready = wait_for(
            lambda: (r := httpx.get(gw.url + "/readyz")).json()["status"] == "unavailable" and r, timeout=10,
            what="readiness to report the registry",
        )
        answer = httpx.post(gw.v1 + "/completions", json={"model": "tiny-gpt", "prompt": "x"},
                            headers={"authorization": f"Bearer {keyring.acme}"})
    assert not_ready.status_code == 503 and "registry" in not_ready.json()["detail"]
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "model_not_ready"


def test_the_reference_model_is_served_streaming_and_not(memory_telemetry, mlflow_server, keyring):
    """The flows area's TinyGPT pyfunc (random weights: the interface matters here, not the text)."""
    import openai

    from gpt_observatory.flows.model import gpt, pyfunc

    name = f"tiny-gpt-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(mlflow_server.url)
    mlflow.set_registry_uri(mlflow_server.url)
    with mlflow.start_run():
        info = pyfunc.log_model(gpt.TinyGPT(gpt.GPTConfig()), registered_model_name=name)
    MlflowClient(mlflow_server.url).set_registered_model_alias(name, "champion", str(info.registered_model_version))
    settings = load(model=name, tracking_uri=mlflow_server.url, api_keys_file=keyring.path)
    with serve(create_app(settings)) as gw:
        wait_for(lambda: ready(gw.url), timeout=120, what="the reference model to load")
        client = openai.OpenAI(base_url=gw.v1, api_key=keyring.acme, max_retries=0)
        answer = client.completions.create(model=name, prompt="To be", max_tokens=8)
        chunks = list(client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True,
            stream_options={"include_usage": True},
        ))
    # Random weights may sample the end-of-text byte at any step, even the first (about 1 in 257):
    # then the answer is shorter, down to empty, and says "stop"; otherwise it runs to max_tokens.
    assert answer.usage.prompt_tokens == len(b"To be")
    choice = answer.choices[0]
    assert choice.finish_reason in ("stop", "length") and answer.usage.completion_tokens <= 8
    assert choice.finish_reason == "stop" or answer.usage.completion_tokens == 8
    assert chunks[-1].usage.prompt_tokens == len(b"user: hi\nassistant:")
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"]) and chunks[-1].usage.completion_tokens <= 6
    assert finish == ["stop"] or chunks[-1].usage.completion_tokens == 6
    settle(memory_telemetry)
    spans = [s for s in memory_telemetry.memory.spans() if s.name == f"chat {name}"]
    assert spans and spans[-1].attributes[names.GEN_AI_USAGE_OUTPUT_TOKENS] == chunks[-1].usage.completion_tokens


def test_an_explicit_tracking_uri_loads_the_model_whatever_mlflow_s_global_uri(mlflow_server, champion, keyring,
                                                                                 tmp_path, monkeypatch):
    # The process-wide MLflow URIs point elsewhere; only the gateway's own setting names the server.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    try:
        settings = load(model=champion, tracking_uri=mlflow_server.url, api_keys_file=keyring.path)
        with serve(create_app(settings)) as gw:
            wait_for(lambda: ready(gw.url), timeout=60, what="the champion to load from the explicit server")
            body = httpx.get(gw.url + "/readyz").json()
    finally:
        mlflow.set_tracking_uri(mlflow_server.url)
        mlflow.set_registry_uri(mlflow_server.url)
    assert body["ready"] is True and body["status"] == "ok", body
