"""Fixtures for the pipeline tests: a real Prefect server, an MLflow server on PostgreSQL,
in-memory telemetry, and reference models trained once per session (tiny step counts)."""

from __future__ import annotations

import contextvars
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import components

# Training steps of the session's model variants: held-out loss ~4.6 / ~3.3 / ~2.9.
VARIANT_STEPS = {"weak": 4, "mid": 20, "strong": 60}

# Small evaluations and lenient absolute bounds: the tests decide with relative gates.
FAST = {
    "progress": False,
    "eval_latency_samples": 4,
    "eval_max_tokens": 4,
    "max_loss": 6.0,
    "max_golden_loss": 6.0,
    "max_latency_p95_s": 30.0,
    "max_latency_regression": 100.0,  # latency on a shared CI box is noise; one test sets it
    "retry_delay_s": 0.5,
}


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    service: components.Service

    def env(self) -> dict[str, str]:
        """Environment for a ``prefect`` CLI or worker talking to this server."""
        return {
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }


@pytest.fixture(scope="session", autouse=True)
def flows_env(tmp_path_factory) -> Iterator[Path]:
    """A private state folder for flows that run in module-scoped fixtures (the root conftest
    gives each test its own, and shuts telemetry down after each test)."""
    state = tmp_path_factory.mktemp("flows-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OBSERVATORY_STATE_DIR", str(state))
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        yield state


def memory_telemetry() -> Any:
    """Configure in-memory telemetry (replacing any live pipeline) and return the handle."""
    from gpt_observatory import telemetry
    return telemetry.configure("observatory-flows-tests", traces_exporter=["memory"], metrics_exporter=["memory"],
                               logs_exporter=["memory"], gpu_enabled=False)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[PrefectServer]:
    """``prefect server start`` on a free port; this process's flows run against it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    port = components.free_port()
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    log = home / "server.log"
    proc = components.start_process(
        [components.require_binary("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        log, env=env,
    )
    service = components.Service(f"http://127.0.0.1:{port}", port, proc, log)
    try:
        components.wait_http(service.url + "/api/health", timeout=180, proc=proc, log=log)
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            yield PrefectServer(env["PREFECT_API_URL"], home, service)
            _drain_prefect_clients()
    finally:
        service.stop()


def _drain_prefect_clients() -> None:
    """Send queued run logs and events while the server is still up; at interpreter exit
    Prefect would otherwise retry them against a stopped server for over a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)


@pytest.fixture(scope="session")
def pg_mlflow(tmp_path_factory, postgres_url) -> Iterator[components.Service]:
    """A real ``mlflow server`` on the machine's PostgreSQL."""
    # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; the dependency we ship is psycopg2.
    store = postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    with components.mlflow_server(tmp_path_factory.mktemp("mlflow-pg"), backend_store_uri=store) as svc:
        yield svc


@dataclass(frozen=True)
class Variant:
    steps: int
    result: Any  # gpt_observatory.flows.model.training.TrainResult
    lineage: Any  # gpt_observatory.flows.lineage.Lineage


@pytest.fixture(scope="session")
def variants() -> dict[str, Variant]:
    """The reference model trained at three step counts (weak < mid < strong), once."""
    from gpt_observatory.flows.lineage import Lineage, code_version
    from gpt_observatory.flows.model.training import TrainParams, load_corpus, torch_threads, train

    corpus = load_corpus()
    out = {}
    with torch_threads(1):
        for name, steps in VARIANT_STEPS.items():
            params = TrainParams(steps=steps)
            result = train(params, corpus, progress=False)
            out[name] = Variant(steps, result, Lineage(corpus.data_hash, code_version(), params))
    return out


@dataclass
class ModelFactory:
    """Registers session variants as versions of fresh model names on one MLflow server."""

    uri: str
    variants: dict[str, Variant]
    _logged: dict[str, tuple[str, str, str | None]]

    def overrides(self, **extra: Any) -> dict[str, Any]:
        return {**FAST, "tracking_uri": self.uri, **extra}

    def new_model(self, *names: str, prefix: str = "m") -> tuple[str, list[str]]:
        """A fresh registered model with one version per variant name, in order."""

        from gpt_observatory.flows.registry import Registry
        from gpt_observatory.flows.stores import client_for

        model = f"{prefix}-{uuid.uuid4().hex[:8]}"
        registry = Registry(client_for(self.uri), model)
        versions = []
        for name in names:
            run_id, source, model_id = self._log(name)
            versions.append(registry.register(source, run_id, model_id, self.variants[name].lineage).version)
        return model, versions

    def _log(self, name: str) -> tuple[str, str, str | None]:
        if name not in self._logged:
            import mlflow

            from gpt_observatory.flows.model import pyfunc
            from gpt_observatory.flows.stores import client_for, experiment_id, use

            use(self.uri)
            experiment = experiment_id(client_for(self.uri), "flows-tests")
            with mlflow.start_run(experiment_id=experiment, run_name=f"variant {name}") as run:
                info = pyfunc.log_model(self.variants[name].result.model)
            self._logged[name] = (run.info.run_id, info.model_uri, info.model_id)
        return self._logged[name]


@pytest.fixture(scope="session")
def pg_models(pg_mlflow, variants, prefect_server) -> ModelFactory:
    return ModelFactory(pg_mlflow.url, variants, {})


def in_thread(pool: ThreadPoolExecutor, fn: Callable[..., Any], **kwargs: Any) -> Future:
    """Run ``fn`` on ``pool`` with a copy of this thread's context (Prefect's settings live there)."""
    ctx = contextvars.copy_context()
    return pool.submit(ctx.run, lambda: fn(**kwargs))


def subprocess_env(*parts: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "OTEL_", "MLFLOW_"))}
    for part in parts:
        env.update(part)
    return env
