"""The catalog reloads without dropping a request: traffic runs across a reload (real uvicorn, real
upstream peers) with 0 failures, requests in flight on a replaced backend finish on it, the new
entry is served after; a bad file leaves the old catalog serving; SIGHUP reloads ``observatory serve``."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests import components
from tests.serving_hooks.support import point_value, serve
from tests.serving_hooks.upstream_peer import UpstreamPeer


@pytest.fixture(scope="module")
def second_peer():
    with UpstreamPeer() as peer:
        yield peer


def entry(name: str, url: str, upstream_model: str = "up-model") -> str:
    return f'[[models]]\nname = "{name}"\nkind = "upstream"\nurl = "{url}"\nupstream_model = "{upstream_model}"\n'


def pooled(name: str, *urls: str) -> str:
    replicas = ", ".join(f'{{ url = "{u}", name = "r{i}" }}' for i, u in enumerate(urls))
    return f'[[models]]\nname = "{name}"\nkind = "upstream"\nupstream_model = "up-model"\nreplicas = [{replicas}]\n'


def write(path: Path, text: str) -> None:
    """Replace the file at once (write and rename), as a deploy tool does."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def chat(client: httpx.Client, model: str, stream: bool = False) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": stream}
    if not stream:
        return client.post("/chat/completions", json=body).status_code
    with client.stream("POST", "/chat/completions", json=body) as r:
        text = "".join(r.iter_text())
        return r.status_code if text.rstrip().endswith("data: [DONE]") and "error" not in text else 599


def peers_seen(peer: UpstreamPeer, model: str) -> int:
    return sum(1 for s in list(peer.seen) if s["body"].get("model") == model)


def test_traffic_across_a_reload_has_no_failure_and_the_new_entry_is_served_after(
        memory_telemetry, upstream_peer, second_peer, tmp_path):
    path = tmp_path / "catalog.toml"
    write(path, entry("steady", upstream_peer.url) + entry("slow", upstream_peer.url, "delay-1"))
    settings = load(catalog_file=path, catalog_poll_s=0.05, allow_anonymous=True, upstream_timeout_s=10)
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def steady_traffic(stream: bool) -> None:
        with httpx.Client(base_url=gw.v1, timeout=15) as client:
            while not stop.is_set():
                statuses[chat(client, "steady", stream)] += 1

    def slow_call(stream: bool) -> int:
        with httpx.Client(base_url=gw.v1, timeout=15) as client:
            return chat(client, "slow", stream)

    with serve(create_app(settings)) as gw, ThreadPoolExecutor(8) as pool:
        loops = [pool.submit(steady_traffic, stream) for stream in (False, True, False, True)]
        slow_before = [pool.submit(slow_call, stream) for stream in (False, True)]
        components.wait_for(lambda: peers_seen(upstream_peer, "delay-1") >= 2, timeout=10, what="slow calls sent")
        seen_second = peers_seen(second_peer, "up-model")
        # "steady" becomes a pool of both peers, "slow" moves to the second (new backends; the old ones hold
        # the slow calls) and "fresh" is added.
        write(path, entry("slow", second_peer.url, "delay-1") + entry("fresh", second_peer.url)
              + pooled("steady", upstream_peer.url, second_peer.url))
        with httpx.Client(base_url=gw.v1, timeout=15) as client:
            components.wait_for(lambda: chat(client, "fresh") == 200, timeout=10, what="the new entry served")
            components.wait_for(lambda: peers_seen(second_peer, "up-model") > seen_second + 20, timeout=10,
                                what="steady traffic on the new backend (the pool)")
        stop.set()
        for loop in loops:
            loop.result()
        assert [f.result() for f in slow_before] == [200, 200]  # finished on the old backend, not cut by its close

    assert statuses[200] > 50 and set(statuses) == {200}, statuses
    reloads = memory_telemetry.memory.metrics()[names.CATALOG_RELOADS.name]
    assert point_value(reloads, **{names.CATALOG_RELOAD_OUTCOME: "ok"}) == 1


def test_an_invalid_file_is_refused_and_the_old_catalog_keeps_serving(memory_telemetry, upstream_peer, tmp_path):
    path = tmp_path / "catalog.toml"
    write(path, entry("kept", upstream_peer.url))
    settings = load(catalog_file=path, catalog_poll_s=0.05, allow_anonymous=True)
    with serve(create_app(settings)) as gw, httpx.Client(base_url=gw.v1, timeout=10) as client:
        write(path, entry("kept", upstream_peer.url) + '[[models]]\nname = "broken"\nkind = "upstream"\n')

        def refused() -> bool:
            points = memory_telemetry.memory.metrics().get(names.CATALOG_RELOADS.name, [])
            return point_value(points, **{names.CATALOG_RELOAD_OUTCOME: "invalid"}) >= 1

        components.wait_for(refused, timeout=10, what="the bad file refused")
        assert chat(client, "kept") == 200
        assert client.post("/chat/completions", json={"model": "broken", "messages": []}).status_code in (400, 404)
        write(path, entry("kept", upstream_peer.url) + entry("mended", upstream_peer.url))  # fixed: read again
        components.wait_for(lambda: chat(client, "mended") == 200, timeout=10, what="the fixed file served")
        assert chat(client, "kept") == 200


def test_sighup_reloads_observatory_serve(upstream_peer, tmp_path):
    path = tmp_path / "catalog.toml"
    write(path, entry("first", upstream_peer.url))
    port = components.free_port()
    cmd = [components.require_binary("observatory"), "serve", "--catalog-file", str(path),
           "--catalog-poll-s", "3600", "--allow-anonymous", "--port", str(port)]
    log = tmp_path / "serve.log"
    proc = components.start_process(cmd, log, env={"OBSERVATORY_STATE_DIR": str(tmp_path / "state"),
                                                   "OBSERVATORY_GPU_ENABLED": "false"}, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        components.wait_http(url.removesuffix("/v1") + "/healthz", proc=proc, log=log)
        with httpx.Client(base_url=url, timeout=10) as client:
            assert chat(client, "first") == 200
            write(path, entry("first", upstream_peer.url) + entry("second", upstream_peer.url))
            assert chat(client, "second") == 404  # the file is not polled (once an hour): only the signal reloads
            os.kill(proc.pid, signal.SIGHUP)
            components.wait_for(lambda: chat(client, "second") == 200, timeout=15, what="reloaded on SIGHUP")
            assert chat(client, "first") == 200
            assert proc.poll() is None
    finally:
        components.stop_process(proc, timeout=30)


def test_a_reload_keeps_unchanged_models_and_closes_a_replaced_one_once_its_stream_is_sent():
    """In process, with the catalog router alone: which backends a reload builds, keeps and closes."""
    import asyncio

    from gpt_observatory.serving_hooks import catalog
    from gpt_observatory.serving_hooks._catalog_router import CatalogRouter
    from gpt_observatory.serving_hooks._errors import ApiError
    from gpt_observatory.serving_hooks._openai import ChatCompletionRequest
    from gpt_observatory.serving_hooks.backends.base import Call, ModelRouter
    from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
    from gpt_observatory.serving_hooks.inference import GenAIHooks, ModelInfo
    from tests.serving_hooks.echo_model import EchoModel

    settings = load(allow_anonymous=True)
    built: list[tuple[str, ModelRouter]] = []

    def build(e: catalog.ModelEntry, _: catalog.Catalog) -> ModelRouter:
        model = EchoModel(label=e.labels.get("v", "a"), delay_s=0.01)
        router = ModelRouter({"champion": InProcessBackend(GenAIHooks(), e.backend_model, model=model,
                                                           info=ModelInfo(e.backend_model))})
        built.append((e.name, router))
        return router

    def version(*tables: dict) -> catalog.Catalog:
        return catalog.parse({"models": [{"kind": "mlflow", **t} for t in tables]}, settings)

    def call(model: str, stream: bool) -> Call:
        request = ChatCompletionRequest.model_validate(
            {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 20, "stream": stream})
        return Call("chat", request, b"", None)

    async def sent(response) -> bytes:
        body: list[bytes] = []

        async def receive():
            await asyncio.Event().wait()  # the client never leaves

        async def send(message):
            body.append(message.get("body", b""))

        await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
        return b"".join(body)

    async def scenario() -> None:
        router = CatalogRouter(version({"name": "same"}, {"name": "moved", "labels": {"v": "a"}}), build)
        await router.start()
        in_flight = await router.select(call("moved", True)).handle(call("moved", True))  # ~0.2 s to send
        old_moved = built[1][1].champion

        outcome = await router.reload(version({"name": "same"}, {"name": "moved", "labels": {"v": "b"}},
                                              {"name": "added"}))
        assert outcome == "ok"
        assert [name for name, _ in built] == ["same", "moved", "moved", "added"]  # "same" kept, not rebuilt
        assert (await old_moved.handle(call("moved", False))).status_code == 200  # still open: a stream is on it
        assert b"data: [DONE]" in await sent(in_flight)
        await asyncio.sleep(0.05)
        try:
            await old_moved.handle(call("moved", False))
        except ApiError as closed:
            assert closed.status == 503
        else:
            raise AssertionError("the replaced backend was not closed after its last stream")
        fresh = await sent(await router.select(call("moved", False)).handle(call("moved", False)))
        assert b'"content":"b' in fresh  # the new version of the entry answers
        assert "added" in router and "moved" in router
        await router.close()

    asyncio.run(scenario())
