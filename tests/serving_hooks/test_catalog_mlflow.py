"""A catalog mixing kinds against a real MLflow server: an ``mlflow`` entry serves its registered
model's champion under its public name and aliases, and takes the requests of a pool that has no
healthy replica (a fallback across kinds)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from mlflow import MlflowClient

from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.components import free_port, wait_for
from tests.serving_hooks.support import serve, settle
from tests.serving_hooks.test_hotswap import register


@pytest.fixture
def registered(mlflow_server):
    """A fresh registered model whose champion answers starting with ``q``."""
    name = f"echo-{uuid.uuid4().hex[:8]}"
    MlflowClient(mlflow_server.url).set_registered_model_alias(name, "champion", register(mlflow_server.url, name, "q"))
    return name


def test_an_mlflow_entry_serves_its_names_and_is_a_pools_fallback(memory_telemetry, mlflow_server, registered,
                                                                   tmp_path):
    path = tmp_path / "catalog.toml"
    path.write_text(f"""
[[models]]
name = "chat-small"
kind = "mlflow"
registered_model = "{registered}"
aliases = ["small"]

[[models]]
name = "chat-big"
kind = "upstream"
fallbacks = ["chat-small"]
replicas = [{{ url = "http://127.0.0.1:{free_port()}/v1", name = "gone" }}]
[models.pool]
probe_interval_s = 0
consecutive_errors = 1
max_attempts = 1
""")
    settings = load(catalog_file=path, tracking_uri=mlflow_server.url, poll_interval_s=5, allow_anonymous=True)
    with serve(create_app(settings)) as gw, httpx.Client(base_url=gw.v1, timeout=30) as client:
        wait_for(lambda: httpx.get(gw.url + "/readyz").json()["models"]["chat-small"]["ready"], timeout=60,
                 what="the champion to load")

        def answer(model: str) -> str:
            r = client.post("/chat/completions", json={"model": model, "max_tokens": 3,
                                                       "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["message"]["content"]

        assert answer("chat-small").startswith("q") and answer("small").startswith("q")
        assert answer("chat-big").startswith("q")  # the pool's only replica is gone: the in-process model answers
        assert [m["id"] for m in client.get("/models").json()["data"]] == ["chat-small", "small", "chat-big"]
        settle(memory_telemetry)

    servers = [s for s in memory_telemetry.memory.spans() if s.name == "POST /v1/chat/completions"]
    assert [s.attributes[names.CATALOG_MODEL] for s in servers] == ["chat-small", "chat-small", "chat-big"]
    assert servers[-1].attributes[names.FALLBACK_MODEL] == "chat-small"
    assert servers[-1].attributes[names.MODEL_VERSION] == "1"  # the in-process model that answered
