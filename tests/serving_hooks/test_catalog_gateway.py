"""A gateway serving a catalog of several models (real uvicorn, real upstream peers): names and
aliases, the list each caller's scopes allow, a 404 for anything else that never becomes a label,
each model's own bounds, and its labels on the span."""

from __future__ import annotations

import httpx
import pytest

from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.serving_hooks.catalog_support import ScopedKeys, chat, scoped_keys
from tests.serving_hooks.support import by_name, serve, settle
from tests.serving_hooks.upstream_peer import TEXT, UpstreamPeer


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> ScopedKeys:
    return scoped_keys(tmp_path_factory)


@pytest.fixture(scope="module")
def second_peer():
    with UpstreamPeer() as peer:
        yield peer


def catalog_text(open_url: str, research_url: str) -> str:
    return f"""
[[models]]
name = "open-model"
kind = "upstream"
url = "{open_url}"
aliases = ["open"]
upstream_model = "up-model"
max_tokens = 8
labels = {{ team = "infra", tier = "free" }}

[[models]]
name = "research-model"
kind = "upstream"
url = "{research_url}"
upstream_model = "up-model"
scope = "research"
"""


@pytest.fixture
def gateway(memory_telemetry, upstream_peer, second_peer, keys, tmp_path):
    path = tmp_path / "catalog.toml"
    path.write_text(catalog_text(upstream_peer.url, second_peer.url))
    settings = load(catalog_file=path, api_keys_file=keys.path, upstream_timeout_s=5)
    with serve(create_app(settings)) as served:
        yield served


def test_the_model_list_is_what_the_callers_scopes_allow(gateway, keys):
    _, plain, lab = keys

    def listed(key: str) -> list[str]:
        r = httpx.get(gateway.v1 + "/models", headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.json()["object"] == "list"
        assert all(card["object"] == "model" for card in r.json()["data"])
        return [card["id"] for card in r.json()["data"]]

    assert listed(plain) == ["open-model", "open"]
    assert listed(lab) == ["open-model", "open", "research-model"]


def test_a_model_the_caller_may_not_use_is_not_there_for_it(gateway, keys, second_peer):
    _, plain, lab = keys
    hidden = chat(gateway, plain, "research-model")
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "model_not_found"
    allowed = chat(gateway, lab, "research-model")
    assert allowed.status_code == 200 and allowed.json()["choices"][0]["message"]["content"] == TEXT
    assert second_peer.seen[-1]["body"]["model"] == "up-model"  # the id the upstream serves


def test_an_alias_is_served_by_its_model_and_the_span_carries_its_labels(gateway, keys, upstream_peer,
                                                                         memory_telemetry):
    before = len(upstream_peer.seen)
    answer = chat(gateway, keys.plain, "open", max_tokens=3)
    assert answer.status_code == 200
    assert len(upstream_peer.seen) == before + 1 and upstream_peer.seen[-1]["body"]["model"] == "up-model"
    settle(memory_telemetry)
    server = by_name(memory_telemetry.memory.spans(), "POST /v1/chat/completions")
    assert server.attributes[names.CATALOG_MODEL] == "open-model"
    assert server.attributes[names.CATALOG_LABEL_PREFIX + "team"] == "infra"
    assert server.attributes[names.CATALOG_LABEL_PREFIX + "tier"] == "free"


def test_an_unknown_model_is_an_openai_404_and_never_a_label(gateway, keys, memory_telemetry):
    unknown = "no-such-model-7f3a"
    r = chat(gateway, keys.lab, unknown)
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "model_not_found" and error["type"] == "invalid_request_error"
    assert "GET /v1/models" in error["message"]
    settle(memory_telemetry)
    for metric, points in memory_telemetry.memory.metrics().items():
        for p in points:
            assert unknown not in p.attributes.values(), metric


def test_each_model_is_held_to_its_own_bounds(gateway, keys):
    too_many = chat(gateway, keys.lab, "open-model", max_tokens=9)
    assert too_many.status_code == 400
    message = too_many.json()["error"]["message"]
    assert "max_tokens must be at most 8" in message and "'open-model'" in message
    assert chat(gateway, keys.lab, "open", max_tokens=9).status_code == 400  # the alias is the same model
    assert chat(gateway, keys.lab, "research-model", max_tokens=9).status_code == 200  # the global bound


def test_readiness_names_every_model(gateway):
    r = httpx.get(gateway.url + "/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["ready"] and body["status"] == "ok"
    assert set(body["models"]) == {"open-model", "research-model"}
