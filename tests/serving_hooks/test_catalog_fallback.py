"""Fallbacks across catalog models: a pool with no healthy replica hands its requests to the first
fallback the caller may use that has one (an event and an attribute on the gateway span, and a
counter), else answers the pool's 503. Real uvicorn, a real upstream peer, replicas on dead ports."""

from __future__ import annotations

import httpx
import pytest

from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.components import free_port
from tests.serving_hooks.catalog_support import ScopedKeys, chat, scoped_keys
from tests.serving_hooks.support import point_value, serve, settle, spans_of
from tests.serving_hooks.upstream_peer import TEXT

# One failed attempt ejects the only replica; no probes: its state comes from requests alone.
POOL = "[models.pool]\nprobe_interval_s = 0\nconsecutive_errors = 1\nmax_attempts = 1\n"


def pool(name: str, fallbacks: list[str], url: str) -> str:
    return (f'[[models]]\nname = "{name}"\nkind = "upstream"\nupstream_model = "up-model"\n'
            f'fallbacks = {fallbacks!r}\nreplicas = [{{ url = "{url}", name = "r1" }}]\n'.replace("'", '"') + POOL)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> ScopedKeys:
    return scoped_keys(tmp_path_factory)


@pytest.fixture
def gateway(memory_telemetry, upstream_peer, keys, tmp_path):
    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(4)]
    text = "\n".join([
        f'[[models]]\nname = "backup"\nkind = "upstream"\nurl = "{upstream_peer.url}"\nupstream_model = "up-model"\n',
        f'[[models]]\nname = "tight"\nkind = "upstream"\nurl = "{upstream_peer.url}"\nupstream_model = "up-model"\n'
        'max_tokens = 4\n',
        pool("to-tight", ["tight", "backup"], dead[3]),
        f'[[models]]\nname = "guarded"\nkind = "upstream"\nurl = "{upstream_peer.url}"\nupstream_model = "up-model"\n'
        'scope = "research"\n',
        pool("pooled", ["backup"], dead[0]),
        pool("stranded", [], dead[1]),
        pool("behind-scope", ["guarded"], dead[2]),
        pool("live", ["backup"], upstream_peer.url),
    ])
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    with serve(create_app(load(catalog_file=path, api_keys_file=keys.path))) as served:
        yield served


def test_a_pool_without_a_healthy_replica_falls_back_and_says_so(gateway, keys, upstream_peer, memory_telemetry):
    key = keys.plain
    before = len(upstream_peer.seen)
    first = chat(gateway, key, "pooled")  # the replica fails (nothing listens): ejected, nothing sent yet
    assert first.status_code == 200 and first.json()["choices"][0]["message"]["content"] == TEXT
    second = chat(gateway, key, "pooled", stream=True)  # known unhealthy: straight to the fallback
    assert second.status_code == 200 and second.text.rstrip().endswith("data: [DONE]")
    assert len(upstream_peer.seen) == before + 2 and upstream_peer.seen[-1]["body"]["model"] == "up-model"

    settle(memory_telemetry)
    fallbacks = memory_telemetry.memory.metrics()[names.GATEWAY_FALLBACKS.name]
    assert point_value(fallbacks, **{names.CATALOG_MODEL: "pooled", names.FALLBACK_MODEL: "backup"}) == 2
    servers = [s for s in memory_telemetry.memory.spans() if s.name == "POST /v1/chat/completions"]
    assert len(servers) == 2
    for span in servers:
        assert span.attributes[names.CATALOG_MODEL] == "pooled"
        assert span.attributes[names.FALLBACK_MODEL] == "backup"
        (event,) = [e for e in span.events if e.name == names.EVENT_FALLBACK]
        assert event.attributes[names.FALLBACK_MODEL] == "backup"
        inference = [s for s in spans_of(memory_telemetry.memory.spans(), span.context.trace_id)
                     if s.name == "chat up-model" and s.attributes.get(names.SERVER_PORT) == upstream_peer.port]
        assert inference, "the fallback's upstream call is in the request's trace"

    ready = httpx.get(gateway.url + "/readyz").json()
    assert ready["status"] == "degraded" and ready["models"]["pooled"]["ready"] is False
    assert ready["models"]["backup"]["ready"] is True


def test_a_healthy_pool_serves_its_own_requests(gateway, keys, memory_telemetry):
    assert chat(gateway, keys.plain, "live").status_code == 200
    settle(memory_telemetry)
    assert names.GATEWAY_FALLBACKS.name not in memory_telemetry.memory.metrics()
    (server,) = [s for s in memory_telemetry.memory.spans() if s.name == "POST /v1/chat/completions"]
    assert names.FALLBACK_MODEL not in server.attributes


def test_without_a_fallback_the_pool_answers_503(gateway, keys):
    for _ in range(2):  # the failed attempt, then the ejected replica
        r = chat(gateway, keys.plain, "stranded")
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_replica"
        assert r.headers["retry-after"] == "1"


def test_a_fallback_the_caller_may_not_use_is_not_used(gateway, keys):
    _, plain, lab = keys
    assert chat(gateway, plain, "behind-scope").status_code == 503  # "guarded" needs the research scope
    assert chat(gateway, lab, "behind-scope").status_code == 200


def test_a_fallback_whose_bounds_the_request_exceeds_is_passed_over(gateway, keys, memory_telemetry):
    assert chat(gateway, keys.plain, "to-tight", max_tokens=3).status_code == 200  # "tight" takes it
    assert chat(gateway, keys.plain, "to-tight", max_tokens=8).status_code == 200  # too big for it: "backup"
    settle(memory_telemetry)
    fallbacks = memory_telemetry.memory.metrics()[names.GATEWAY_FALLBACKS.name]
    assert point_value(fallbacks, **{names.CATALOG_MODEL: "to-tight", names.FALLBACK_MODEL: "tight"}) == 1
    assert point_value(fallbacks, **{names.CATALOG_MODEL: "to-tight", names.FALLBACK_MODEL: "backup"}) == 1
