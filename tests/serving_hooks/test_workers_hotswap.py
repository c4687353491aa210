"""``serve --workers 2`` with the in-process MLflow champion: every worker follows the aliases on its
own, so moving ``champion`` to a new version is served by every worker without a restart, and a
canary's challenger is served by every worker while its alias exists."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpt_observatory.telemetry import names
from tests import components
from tests.reliability.support import api_key, call, register_slow_model, set_champion, start_gateway

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore:.*Add type hints")]

MODEL = "slow-echo-workers"


def scrape(url: str) -> str:
    return httpx.get(url + "/metrics", timeout=10).text


def workers_serving(scrape: str, value: str, attribute: str = names.MODEL_VERSION) -> set[str]:
    """The workers whose series in one scrape carry ``attribute`` = ``value`` (the model version by default)."""
    label = attribute.replace(".", "_")
    return {s.labels[names.WORKER] for f in text_string_to_metric_families(scrape) for s in f.samples
            if s.labels.get(label) == value and names.WORKER in s.labels}


def answers(url: str, key: str, n: int = 40) -> list[str]:
    """The first letter of ``n`` answers (the model version's label), on fresh connections, 8 at a time."""
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: call(url, key, MODEL, 3, stream=i % 2 == 0), range(n)))
    assert all(r.ok for r in results), [(r.status, r.error or r.text[:80]) for r in results if not r.ok]
    return [r.text[0] for r in results]


def every_worker_loaded(url: str, key: str) -> bool:
    """Whether no worker is still loading its model: each loads its own, and answers 503 until it has
    (as one gateway process does), while /readyz reports only the worker that answers it."""
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: call(url, key, MODEL, 3, stream=False), range(40)))
    return all(r.ok for r in results)


def test_every_worker_serves_the_new_champion_after_the_alias_moves(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    set_champion(uri, MODEL, register_slow_model(uri, MODEL, "a", 0.0, artifacts=tmp_path / "artifacts"))
    keys = tmp_path / "api-keys.json"
    key = api_key(keys)
    gw = start_gateway(tmp_path / "gw", uri, MODEL, keys, env={"OBSERVATORY_SERVE_WORKERS": "2",
                                                              "OBSERVATORY_GPU_ENABLED": "false"})
    try:
        gw.wait_ready("1")
        components.wait_for(lambda: every_worker_loaded(gw.url, key), timeout=120, interval=0.5,
                            what="both workers loaded")

        # Both workers load v1 (a worker answers /readyz before the other has loaded: wait for both).
        components.wait_for(lambda: set(answers(gw.url, key)) == {"a"} and workers_serving(scrape(gw.url), "1") == {"0", "1"},
                            timeout=120, interval=0.5, what="both workers serving v1")
        set_champion(uri, MODEL, register_slow_model(uri, MODEL, "b", 0.0, artifacts=tmp_path / "artifacts"))
        components.wait_for(lambda: set(answers(gw.url, key)) == {"b"}, timeout=120, interval=0.5, what="every answer from v2")
        assert set(answers(gw.url, key)) == {"b"}  # and it stays so
        served_v2 = workers_serving(scrape(gw.url), "2")
    finally:
        gw.stop()

    assert served_v2 == {"0", "1"}


def test_every_worker_routes_the_canary_while_the_challenger_alias_exists(tmp_path):
    from gpt_observatory.flows.registry import CHALLENGER, Registry
    from gpt_observatory.flows.stores import client_for

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    set_champion(uri, MODEL, register_slow_model(uri, MODEL, "a", 0.0, artifacts=tmp_path / "artifacts"))
    registry = Registry(client_for(uri), MODEL)
    registry.set_alias(CHALLENGER, register_slow_model(uri, MODEL, "b", 0.0, artifacts=tmp_path / "artifacts"))
    keys = tmp_path / "api-keys.json"
    key = api_key(keys)
    gw = start_gateway(tmp_path / "gw", uri, MODEL, keys, env={
        "OBSERVATORY_SERVE_WORKERS": "2", "OBSERVATORY_SERVE_CANARY_SHARE": "0.5", "OBSERVATORY_GPU_ENABLED": "false"})
    try:
        gw.wait_ready("1")
        components.wait_for(lambda: every_worker_loaded(gw.url, key), timeout=120, interval=0.5,
                            what="both workers loaded")
        role = names.MODEL_ROLE
        components.wait_for(
            lambda: set(answers(gw.url, key)) == {"a", "b"}
            and workers_serving(scrape(gw.url), names.MODEL_ROLE_CHALLENGER, role) == {"0", "1"},
            timeout=120, interval=0.5, what="both workers routing to the challenger")
        registry.clear_alias(CHALLENGER)  # what a canary decision does: every worker goes back to the champion
        components.wait_for(lambda: set(answers(gw.url, key)) == {"a"}, timeout=60, interval=0.5,
                            what="every answer from the champion")
        assert set(answers(gw.url, key, 60)) == {"a"}
    finally:
        gw.stop()
