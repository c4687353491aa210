"""The MLflow tracking server goes down while the gateway serves: serving continues on the loaded
version, readiness reports the degraded registry, and on recovery the gateway picks up a
promotion made while it could not see the registry."""

from __future__ import annotations

import time

import pytest

from tests.components import wait_for
from tests.reliability.support import Load, MlflowServer, api_key, register_slow_model, set_champion, start_gateway

pytestmark = pytest.mark.filterwarnings("ignore:Add type hints")

MODEL = "slow-echo"


@pytest.mark.timeout(180)
def test_mlflow_down_keeps_serving_reports_degraded_and_recovers_a_promotion(tmp_path):
    server = MlflowServer(tmp_path / "mlflow")
    server.start()
    key = api_key(tmp_path / "api-keys.json")
    # The gateway boots (and polls for a champion) while the versions are registered.
    gw = start_gateway(tmp_path, server.url, MODEL, tmp_path / "api-keys.json", poll_interval=0.3)
    try:
        v1 = register_slow_model(server.url, MODEL, "a", 0.005)
        v2 = register_slow_model(server.url, MODEL, "b", 0.005)  # registered, not yet promoted
        set_champion(server.url, MODEL, v1)
        gw.wait_ready(v1)
        # steady, light traffic: the restarting server needs the CPU more than the test needs load
        with Load(gw.url, key, MODEL, max_tokens=4, workers=2, pause_s=0.1) as load:
            time.sleep(0.5)
            server.stop()  # the outage
            degraded = wait_for(lambda: (r := gw.readyz())["status"] == "degraded" and r, timeout=20,
                                what="readiness to report the registry")
            server.spawn()  # recovery begins: the server takes seconds to answer again
            before = len(load.results)
            # A promotion made meanwhile, through the store the server fronts (another replica's view).
            set_champion(server.store, MODEL, v2)
            time.sleep(1.0)
            assert gw.readyz()["model"]["version"] == v1, "the gateway saw the promotion before recovery"
            served_in_outage = len(load.results) - before
            server.wait()
            recovered = gw.wait_ready(v2, timeout=60)
            wait_for(lambda: any(r.text.startswith("b") for r in load.results[-4:]), timeout=20,
                     what="answers of the promoted version")
        results = load.results
    finally:
        gw.stop()
        server.stop()

    assert degraded["ready"] is True and degraded["model"]["version"] == v1
    assert "registry" in degraded["detail"]
    assert served_in_outage > 0, "nothing was served while the registry was down"
    failures = [(r.status, r.error, r.text[:80]) for r in results if not r.ok]
    assert not failures, f"{len(failures)} of {len(results)} requests failed: {failures[:3]}"
    assert recovered["status"] == "ok" and recovered["model"]["version"] == v2
    firsts = [r.text[0] for r in results]
    assert firsts[0] == "a" and firsts[-1] == "b", "the promotion made during the outage was not picked up"
