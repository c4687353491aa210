"""Live proof: real traffic through the reference gateway, a real pipeline run, a real Prometheus;
every panel query, template variable and rule expression is then evaluated through Prometheus's
HTTP API and must return data, unless it waits for an event this machine cannot produce (a GPU,
a failed NVML read), which is listed (and the GPU list written for the GPU
machine); the panel over ``ALERTS`` is excused too (data only while an alert is pending or firing). Nothing is pushed or faked: every series comes from the processes under test.

Events driven for real: requests before the champion exists (registry errors, 503s, 502s through
the proxy), refused credentials, malformed and oversized bodies, a rate limit, a pipeline run
pushing to the Pushgateway, a hot-swap to a new registry version, a gateway in upstream (proxy)
mode whose rate-limit store (Redis) is down (fail-open) and which throttles a burst of bad keys, a
client leaving mid-stream, and trace export to an OTLP endpoint nobody listens on. A generation
that fails (``inference_error``: the reference model does not fail on any input) is proven on a
real Prometheus by ``tests/serving_hooks/test_stream_failures.py``. The fleet board and rules need a
replica pool: ``tests/dashboards/test_fleet.py`` runs one and proves them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import pytest

from gpt_observatory.dashboards import events
from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards.query import sel
from gpt_observatory.dashboards.rules import SLOS
from gpt_observatory.dashboards.verify import evaluate, live_queries, query, report
from gpt_observatory.telemetry import names
from tests import components
from tests.dashboards.conftest import is_fleet, prometheus_for

MODEL = "dashboards-live-gpt"  # its own registered model: the session MLflow server is shared
DRIVEN = {events.RATE_LIMITED, events.HOT_SWAP, events.REGISTRY_ERROR, events.UPSTREAM, events.EXPORT_FAILURE,
          events.PIPELINE_RUN, events.FAIL_OPEN, events.AUTH_THROTTLED}
# A series limit of 2,000+ label values is no part of this run (tests/telemetry cover the overflow); the vLLM
# panels are proven on a real Prometheus by tests/dashboards/test_vllm.py.
# The usage ledger's panels and rules: tests/dashboards/test_usage.py runs gateways with it on.
NOT_HERE = {events.GPU, events.GPU_READ_ERROR, events.ALERT_ACTIVE, events.INFERENCE_ERROR, events.SERIES_OVERFLOW,
            events.VLLM_SCRAPED, events.LEDGER, events.LEDGER_DROPPED, events.LEDGER_SHIP_FAILED}
OBSERVATORY = [sys.executable, "-c", "from gpt_observatory.cli import main; main()"]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    """A process's own state folder and settings (the autouse fixture cleared the caller's)."""
    (tmp / "prefect").mkdir(parents=True, exist_ok=True)
    return {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "OBSERVATORY_STATE_DIR": str(tmp / "state"), "OTEL_LOGS_EXPORTER": "none",
            "PREFECT_HOME": str(tmp / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def _chat(client: httpx.Client, url: str, key: str | None, stream: bool = False, tokens: int = 8) -> int:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "The king"}], "max_tokens": tokens,
            "stream": stream}
    if stream:
        with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as r:
            for _ in r.iter_bytes():
                pass
            return r.status_code
    return client.post(f"{url}/v1/chat/completions", json=body, headers=headers).status_code


@pytest.mark.slow
def test_every_panel_and_rule_returns_data_from_real_traffic(tmp_path, mlflow_server, pushgateway, artifacts_dir):
    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore

    keys = ApiKeyStore(tmp_path / "api-keys.json")
    acme, _ = keys.create("acme")
    globex, _ = keys.create("globex")
    proxy, _ = keys.create("proxy")
    revoked, record = keys.create("acme")
    keys.revoke(record.key_id)
    budgeted, _ = keys.create("budgeted")
    # Budgets (issue 17): "budgeted" may spend 30 micro-USD a day at A (a request's worst case is ~11 at a
    # micro-USD a token: two pass, then 429); acme's budget at B is kept in B's dead Redis (fail-open, counted).
    tenants, prices = tmp_path / "tenants.toml", tmp_path / "prices.toml"
    tenants.write_text('[[tenants]]\nname = "budgeted"\nbudget = { amount = "0.00003", period = "day" }\n'
                       '[[tenants]]\nname = "acme"\nbudget = { amount = "1000", period = "day" }\n')
    prices.write_text(f'[[prices]]\nmodel = "{MODEL}"\neffective_from = 2026-01-01T00:00:00Z\ncurrency = "USD"\n'
                      'input_per_1m = "1"\noutput_per_1m = "1"\n')
    metering = {"OBSERVATORY_SERVE_TENANTS_FILE": str(tenants), "OBSERVATORY_SERVE_PRICES_FILE": str(prices)}
    a_port, b_port, dead_port = components.free_port(), components.free_port(), components.free_port()
    dead_redis = components.free_port()
    a, b = f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}"
    procs = []
    with prometheus_for(tmp_path / "prom", [f"127.0.0.1:{a_port}", f"127.0.0.1:{b_port}"],
                        pushgateway.url.removeprefix("http://")) as prom:
        try:
            # Gateway A serves the champion in process; its traces also go to an OTLP endpoint nobody
            # listens on (a collector that is down), so export failures are real.
            gateway_env = _env(tmp_path / "a", OTEL_TRACES_EXPORTER="jsonl,otlp",
                               OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf", OTEL_EXPORTER_OTLP_TIMEOUT="500",
                               OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"http://127.0.0.1:{dead_port}/v1/traces",
                               OTEL_BSP_SCHEDULE_DELAY="200",
                               # --tracking-uri alone does not reach model downloads (models:/ is resolved
                               # against MLflow's default registry): reported to the serving area.
                               MLFLOW_TRACKING_URI=mlflow_server.url, **metering)
            procs.append(components.start_process([*OBSERVATORY, "serve", "--backend", "mlflow", "--model", MODEL,
                                 "--tracking-uri", mlflow_server.url, "--poll-interval", "1", "--port", str(a_port),
                                 "--api-keys-file", str(tmp_path / "api-keys.json"), "--rpm", "30"],
                                tmp_path / "a.log", gateway_env))
            # Gateway B proxies A (upstream backend): the GenAI client metrics. Its rate-limit store is
            # a Redis nobody runs: every request is admitted unchecked (fail-open) and counted.
            procs.append(components.start_process([*OBSERVATORY, "serve", "--backend", "upstream", "--upstream-url", f"{a}/v1",
                                 "--model", MODEL, "--redis-url", f"redis://127.0.0.1:{dead_redis}/0",
                                 "--rpm", "10000",
                                 "--port", str(b_port), "--api-keys-file", str(tmp_path / "api-keys.json")],
                                tmp_path / "b.log",
                                _env(tmp_path / "b", OTEL_TRACES_EXPORTER="jsonl", OBSERVATORY_SERVE_UPSTREAM_API_KEY=proxy,
                                     **metering)))
            # The pipeline trains, registers, evaluates and promotes v1; its metrics go to the Pushgateway.
            pipeline = components.start_process([*OBSERVATORY, "pipeline", "run", "--model", MODEL], tmp_path / "pipeline.log",
                              _env(tmp_path / "p", OTEL_SERVICE_NAME="observatory-pipeline",
                                   OTEL_METRICS_EXPORTER="pushgateway", OTEL_TRACES_EXPORTER="jsonl",
                                   OBSERVATORY_PUSHGATEWAY_URL=pushgateway.url, MLFLOW_TRACKING_URI=mlflow_server.url))
            procs.append(pipeline)
            components.wait_http(f"{a}/healthz", timeout=90, proc=procs[0], log=tmp_path / "a.log")
            components.wait_http(f"{b}/healthz", timeout=90, proc=procs[1], log=tmp_path / "b.log")

            with httpx.Client(timeout=30) as client:
                # Before any champion exists: 503 from A, an upstream failure from B; refused credentials.
                assert _chat(client, a, globex) == 503
                assert _chat(client, b, globex) >= 500
                assert _chat(client, a, None) == 401
                assert _chat(client, a, "obs_000000000000_not-a-real-key-at-all-000000000") == 401
                assert _chat(client, a, revoked) == 401
                bad = client.post(f"{a}/v1/chat/completions", content=b"{not json", headers={
                    "authorization": f"Bearer {globex}", "content-type": "application/json"})
                assert bad.status_code == 400
                big = client.post(f"{a}/v1/completions", content=b'{"prompt": "' + b"x" * (2 << 20) + b'"}',
                                  headers={"authorization": f"Bearer {globex}", "content-type": "application/json"})
                assert big.status_code == 413

                assert pipeline.wait(timeout=150) == 0, (tmp_path / "pipeline.log").read_text()[-3000:]
                components.wait_for(lambda: client.get(f"{a}/readyz").status_code == 200, 60, what="A serves v1")
                for stream in (False, True, False, True, False):
                    assert _chat(client, a, globex, stream) == 200
                    assert _chat(client, b, acme, stream) == 200
                completion = client.post(f"{a}/v1/completions", headers={"authorization": f"Bearer {globex}"},
                                         json={"model": MODEL, "prompt": "Once", "max_tokens": 4})
                assert completion.status_code == 200
                # acme exceeds 30 requests a minute at A.
                statuses = [client.get(f"{a}/v1/models", headers={"authorization": f"Bearer {acme}"}).status_code
                            for _ in range(34)]
                assert 429 in statuses
                spending = [_chat(client, a, budgeted) for _ in range(4)]
                assert spending[0] == 200 and spending[-1] == 429, spending  # the budget, spent

                # Hot-swap: a new registry version becomes champion while A serves.
                from mlflow import MlflowClient

                registry = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
                v1 = registry.get_model_version_by_alias(MODEL, "champion")
                v2 = registry.create_model_version(MODEL, v1.source, run_id=v1.run_id,
                                                   model_id=v1.source.removeprefix("models:/"))
                registry.set_registered_model_alias(MODEL, "champion", v2.version)
                components.wait_for(
                    lambda: client.get(f"{a}/readyz").json().get("model", {}).get("version") == v2.version,
                    60, what="A hot-swaps to v2")
                for stream in (False, True):
                    assert _chat(client, a, globex, stream) == 200
                # A client that leaves mid-stream: the generation stops (no error of ours).
                body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell"}], "max_tokens": 400,
                        "stream": True}
                with client.stream("POST", f"{a}/v1/chat/completions", json=body,
                                   headers={"authorization": f"Bearer {globex}"}) as r:
                    next(r.iter_bytes())
                # A burst of bad keys from one address at B: failed-auth throttling answers 429.
                bad_key = {"authorization": "Bearer obs_000000000000_not-a-real-key-at-all-000000000"}
                burst = [client.get(f"{b}/v1/models", headers=bad_key).status_code for _ in range(14)]
                assert burst[0] == 401 and 429 in burst, burst

            # Wait until Prometheus has scraped the last requests, the push and the rule results.
            for probe in (sel(s.total(names.MODEL_SWAPS), f'{s.MODEL_VERSION}="{v2.version}"'),
                          s.total(names.PIPELINE_DECISIONS), next(x for x in SLOS if x.name == "ttft").record("5m"),
                          sel(s.total(names.TELEMETRY_EXPORTED), f'{s.TELEMETRY_OUTCOME}="failure"')):
                components.wait_for(lambda p=probe: query(prom.url, p), 30, what=probe)
            time.sleep(3)  # two more scrapes of every series, so rates have two samples

            outcomes = evaluate(prom.url, [lq for lq in live_queries() if not is_fleet(lq)])
        finally:
            for p in procs:
                components.stop_process(p)

        happened = {e.key for e in DRIVEN}
        out = artifacts_dir / "dashboards"
        rep = report(outcomes, happened, out / "live-report.json")
        (out / "live-report.txt").write_text("\n".join(rep.lines) + "\n")
        gpu = [{"where": o.query.where, "expr": o.query.expr} for o in rep.waiting if events.GPU.key in o.query.needs]
        (out / "gpu-queries.json").write_text(json.dumps(gpu, indent=2) + "\n")
        print("\n".join(rep.lines))

    assert not rep.unexpected, "\n".join(f"{o.query.where}: {o.error or 'no data'}\n  {o.query.expr}"
                                         for o in rep.unexpected)
    waiting_for = {k for o in rep.waiting for k in o.query.needs if k not in happened}
    assert waiting_for <= {e.key for e in NOT_HERE}, waiting_for
    assert {o.query.where.split(':')[0] for o in outcomes} >= {"overview", "gateway", "inference", "gpu",
                                                                "pipeline", "telemetry-health"}
