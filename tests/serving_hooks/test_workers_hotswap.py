"""``serve --workers 2`` with the in-process MLflow champion: every worker follows the alias on its
own, so moving ``champion`` to a new version is served by every worker without a restart."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpt_observatory.serving_hooks._worker_metrics import WORKER_LABEL
from gpt_observatory.telemetry import names
from tests import components
from tests.reliability.support import api_key, call, register_slow_model, set_champion, start_gateway

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore:.*Add type hints")]

MODEL = "slow-echo-workers"


def scrape(url: str) -> str:
    return httpx.get(url + "/metrics", timeout=10).text


def workers_serving(scrape: str, version: str) -> set[str]:
    """The workers whose series in one scrape carry the model version ``version``."""
    label = names.MODEL_VERSION.replace(".", "_")
    return {s.labels[WORKER_LABEL] for f in text_string_to_metric_families(scrape) for s in f.samples
            if s.labels.get(label) == version and WORKER_LABEL in s.labels}


def test_every_worker_serves_the_new_champion_after_the_alias_moves(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    set_champion(uri, MODEL, register_slow_model(uri, MODEL, "a", 0.0, artifacts=tmp_path / "artifacts"))
    keys = tmp_path / "api-keys.json"
    key = api_key(keys)
    gw = start_gateway(tmp_path / "gw", uri, MODEL, keys, env={"OBSERVATORY_SERVE_WORKERS": "2",
                                                              "OBSERVATORY_GPU_ENABLED": "false"})
    try:
        gw.wait_ready("1")

        def answers(n: int = 40) -> list[str]:
            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(lambda i: call(gw.url, key, MODEL, 3, stream=i % 2 == 0), range(n)))
            assert all(r.ok for r in results), [(r.status, r.error or r.text[:80]) for r in results if not r.ok]
            return [r.text[0] for r in results]

        # Both workers load v1 (a worker answers /readyz before the other has loaded: wait for both).
        components.wait_for(lambda: set(answers()) == {"a"} and workers_serving(scrape(gw.url), "1") == {"0", "1"},
                            timeout=120, interval=0.5, what="both workers serving v1")
        set_champion(uri, MODEL, register_slow_model(uri, MODEL, "b", 0.0, artifacts=tmp_path / "artifacts"))
        components.wait_for(lambda: set(answers()) == {"b"}, timeout=120, interval=0.5, what="every answer from v2")
        assert set(answers()) == {"b"}  # and it stays so
        served_v2 = workers_serving(scrape(gw.url), "2")
    finally:
        gw.stop()

    assert served_v2 == {"0", "1"}
