"""Live proof of the fleet board and rules: ``observatory serve`` with a catalog whose model is a
pool of two real replica processes (with a fallback model on a third), scraped by a real
Prometheus loaded with the committed rules. One replica is killed: its failures are retried (one,
then the retry budget is spent), it is ejected and ReplicaEjected fires. Then the other: the pool
refuses a request with no replica left and the fallback serves. Every panel query, template
variable and rule of the fleet is then evaluated on Prometheus and must return data. Nothing is
pushed or faked: every series comes from the gateway's own /metrics.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from gpt_observatory.dashboards import events
from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards.artefacts import ROOT
from gpt_observatory.dashboards.boards import fleet
from gpt_observatory.dashboards.rules import FLEET_HEALTHY
from gpt_observatory.dashboards.scrape import RULE_FILE, scrape_config
from gpt_observatory.dashboards.verify import evaluate, live_queries, query, report
from gpt_observatory.telemetry import names
from tests import components
from tests.dashboards.conftest import is_fleet, prometheus_with
from tests.serving_hooks.replica_procs import replicas

POOL, SPARE = "fleet-pool", "fleet-spare"
# No active probes (a dead replica then stays "ejected", not "unhealthy": the state ReplicaEjected reads),
# ejections that outlast the run, both replicas may be out at once (so the pool can run dry), and a retry
# budget of one retry a minute (the second retryable failure is denied). Least-outstanding, not the default
# latency-weighted balancer: that one learns to avoid a failing replica, so it would never be ejected here.
POLICY = """balancer = "least_outstanding"
probe_interval_s = 0
consecutive_errors = 3
base_ejection_s = 300
max_ejection_s = 300
max_ejected_share = 1.0
max_attempts = 2
retry_ratio = 0.0
retry_min = 1
retry_window_s = 60
"""


def _catalog(pool: list[str], spare: str) -> str:
    listed = ",\n".join(f'  {{ url = "{url}", name = "replica-{i}" }}' for i, url in enumerate(pool))
    return (f'[[models]]\nname = "{POOL}"\nkind = "upstream"\nupstream_model = "up-model"\n'
            f'fallbacks = ["{SPARE}"]\nreplicas = [\n{listed},\n]\n[models.pool]\n{POLICY}\n'
            f'[[models]]\nname = "{SPARE}"\nkind = "upstream"\nupstream_model = "up-model"\nurl = "{spare}"\n')


def _chat(client: httpx.Client, stream: bool = False) -> int:
    body = {"model": POOL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": stream}
    if stream:
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            for _ in r.iter_bytes():
                pass
            return r.status_code
    return client.post("/v1/chat/completions", json=body).status_code


def _state(client: httpx.Client, replica: str) -> str:
    return client.get("/readyz").json()["models"][POOL]["model"]["replicas"][replica]["state"]


def _until(client: httpx.Client, done, limit: int) -> list[int]:
    """Send requests (every other one streamed) until ``done()``; their statuses."""
    statuses: list[int] = []
    while not done():
        assert len(statuses) < limit, f"not within {limit} requests: {statuses}"
        statuses.append(_chat(client, stream=len(statuses) % 2 == 1))
    return statuses


def _firing(prom: str, alert: str, **labels: str) -> bool:
    matchers = ", ".join([f'alertname="{alert}"', 'alertstate="firing"', *(f'{k}="{v}"' for k, v in labels.items())])
    return bool(query(prom, f"{s.ALERTS}{{{matchers}}}"))


@pytest.mark.slow
def test_every_fleet_panel_and_rule_returns_data_from_a_real_pool(tmp_path: Path, artifacts_dir: Path):
    queries = [lq for lq in live_queries() if is_fleet(lq)]
    port = components.free_port()
    config = scrape_config(gateway=[f"127.0.0.1:{port}"], gpu=[], pushgateway=[], collector=[], vllm=[],
                           interval="1s", rule_files=(str(ROOT / "prometheus" / RULE_FILE),))
    with replicas(3, log_dir=tmp_path) as (r0, r1, spare), prometheus_with(tmp_path / "prom", config) as prom:
        catalog = tmp_path / "catalog.toml"
        catalog.write_text(_catalog([r0.url, r1.url], spare.url))
        log = tmp_path / "serve.log"
        gateway = components.start_process(
            [components.require_binary("observatory"), "serve", "--catalog-file", str(catalog), "--allow-anonymous",
             "--port", str(port)], log,
            env={"OBSERVATORY_STATE_DIR": str(tmp_path / "state"), "OBSERVATORY_GPU_ENABLED": "false",
                 "OTEL_LOGS_EXPORTER": "none"}, cwd=tmp_path)
        try:
            components.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=90, proc=gateway, log=log)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                assert [_chat(client, stream=i % 2 == 1) for i in range(10)] == [200] * 10

                # replica-1 dies: one failure retried on replica-0, the next ones denied (budget spent)
                # and answered 502, the third in a row ejects it.
                r1.kill()
                statuses = _until(client, lambda: _state(client, "replica-1") == "ejected", 200)
                assert set(statuses) <= {200, 502} and statuses.count(502) == 2, statuses
                components.wait_for(lambda: _firing(prom.url, "ReplicaEjected", **{s.REPLICA: "replica-1"}), 30,
                                    what="ReplicaEjected firing for replica-1")

                # replica-0 dies too: two failures answered 502 (nowhere to retry), the third ejects it and
                # the pool, with no replica left, refuses the request: the fallback serves it and the next.
                r0.kill()
                statuses = _until(client, lambda: _state(client, "replica-0") == "ejected", 10)
                assert statuses == [502, 502, 200], statuses
                assert [_chat(client, stream=i % 2 == 1) for i in range(4)] == [200] * 4

            # Wait until Prometheus has scraped the refusal and the fallbacks and run the rules on them.
            for probe in (s.total(names.FLEET_UNAVAILABLE), s.total(names.GATEWAY_FALLBACKS), f"{FLEET_HEALTHY} == 0"):
                components.wait_for(lambda p=probe: query(prom.url, p), 30, what=probe)
            time.sleep(3)  # two more scrapes of every series, so rates have two samples
            outcomes = evaluate(prom.url, queries)
        finally:
            components.stop_process(gateway)

    rep = report(outcomes, {e.key for e in events.FLEET_EVENTS}, artifacts_dir / "dashboards" / "fleet-report.json")
    print("\n".join(rep.lines))
    assert not rep.unexpected, "\n".join(f"{o.query.where}: {o.error or 'no data'}\n  {o.query.expr}"
                                         for o in rep.unexpected)
    assert not rep.waiting and len(outcomes) == len(queries)
    assert {o.query.where.split(" query")[0] for o in outcomes if o.query.where.startswith("fleet: panel")} == {
        f'fleet: panel "{p.title}"' for p in fleet.board().panels()}
    firing = {o.query.where for o in outcomes if o.firing}
    # Both replicas ejected: the pool is empty now (PoolBelowHealthy waits its 5 minutes, PoolUnavailable
    # its minute; their conditions hold), the retry ratio (1 retry) is low.
    assert {'alert "ReplicaEjected"', 'alert "PoolBelowHealthy"', 'alert "PoolUnavailable"'} <= firing, firing
    assert 'alert "RetryRatioHigh"' not in firing
