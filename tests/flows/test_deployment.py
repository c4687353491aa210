"""``prefect.yaml`` against a real Prefect server and process worker: work pool, ``prefect
deploy --all``, a deployment run executed by the worker, the champion set in MLflow, one trace
in the telemetry files, and the evaluation gauges on the Pushgateway."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

from gpt_observatory.flows.stores import client_for
from gpt_observatory.telemetry import names
from tests import components
from tests.flows.conftest import FAST, PrefectServer, subprocess_env

REPO = Path(__file__).resolve().parents[2]


def prefect(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    done = subprocess.run([components.require_binary("prefect"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_deploy_all_then_a_worker_runs_the_pipeline(prefect_server: PrefectServer, pushgateway, tmp_path) -> None:
    from prefect.client.orchestration import get_client

    state = tmp_path / "state"
    env = subprocess_env(prefect_server.env(), {
        "OBSERVATORY_STATE_DIR": str(state),  # embedded MLflow default: sqlite under the state folder
        "OTEL_TRACES_EXPORTER": "jsonl",
        "OTEL_METRICS_EXPORTER": "jsonl,pushgateway",
        "OTEL_LOGS_EXPORTER": "jsonl",
        "OBSERVATORY_PUSHGATEWAY_URL": pushgateway.url,
        "OBSERVATORY_GPU_ENABLED": "false",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "OBSERVATORY_PIPELINE_STEPS": "20",
        **{f"OBSERVATORY_PIPELINE_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
           for k, v in FAST.items()},
    })
    prefect(env, "work-pool", "create", "observatory", "--type", "process", "--overwrite")
    prefect(env, "--no-prompt", "deploy", "--all")
    out = prefect(env, "deployment", "run", "pipeline/pipeline")
    flow_run_id = re.search(r"flow-run/([0-9a-f-]{36})", out).group(1)
    worker_log = prefect(env, "worker", "start", "--pool", "observatory", "--run-once", timeout=600)
    (tmp_path / "worker.log").write_text(worker_log)

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        deployments = {d.name: d for d in client.read_deployments()}
    assert run.state is not None and run.state.is_completed(), run.state
    assert {"pipeline", "promote", "rollback"} <= set(deployments)
    assert deployments["pipeline"].schedules and deployments["pipeline"].entrypoint == "gpt_observatory.flows.pipeline.pipeline"

    store = client_for(f"sqlite:///{state / 'mlflow.db'}")
    champion = store.get_model_version_by_alias("tiny-gpt", "champion")
    assert champion.tags["observatory.last_decision"] == "promoted"

    spans = [json.loads(line) for line in (state / "telemetry" / "traces.jsonl").read_text().splitlines()]
    runs = [s for s in spans if s["attributes"].get("prefect.run.type") in ("flow", "task")]
    assert len(runs) >= 10 and len({s["trace_id"] for s in spans}) == 1

    with urllib.request.urlopen(pushgateway.url + "/metrics", timeout=10) as response:
        pushed = response.read().decode()
    assert names.EVAL_LOSS.prometheus in pushed
    assert names.prometheus_series(names.PIPELINE_DECISIONS)[0] in pushed
