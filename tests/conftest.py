"""Fixtures shared by every test area: real components on free loopback ports."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import components

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests keep evidence worth looking at (screenshots, logs)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[components.Service]:
    """A real MLflow tracking server on SQLite, shared by the session."""
    with components.mlflow_server(tmp_path_factory.mktemp("mlflow")) as svc:
        yield svc


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The machine's PostgreSQL (127.0.0.1:5432, trust auth); a fresh database per session."""
    name = f"observatory_test_{os.getpid()}"
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-c"]
    subprocess.run([*psql, f"DROP DATABASE IF EXISTS {name}"], check=True, capture_output=True)
    subprocess.run([*psql, f"CREATE DATABASE {name}"], check=True, capture_output=True)
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The machine's Redis; tests use their own key prefixes."""
    import redis

    url = "redis://127.0.0.1:6379/0"
    redis.Redis.from_url(url).ping()
    return url


@pytest.fixture
def pushgateway(tmp_path) -> Iterator[components.Service]:
    with components.pushgateway(tmp_path) as svc:
        yield svc


@pytest.fixture
def state_dir(tmp_path, monkeypatch) -> Path:
    """An empty Observatory state folder, set in the environment."""
    path = tmp_path / "state"
    monkeypatch.setenv("OBSERVATORY_STATE_DIR", str(path))
    return path


_MLFLOW_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


_MLFLOW_ENV_AT_START = {k: os.environ.get(k) for k in _MLFLOW_URI_VARS}


def _reset_mlflow_uris(env: dict[str, str | None]) -> None:
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tracking_utils._tracking_uri = None
    registry_utils._registry_uri = None
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def _restore_mlflow_uris():
    """``mlflow.set_tracking_uri``/``set_registry_uri`` change process-wide state (module globals and
    ``MLFLOW_*`` variables): every test starts from the session's original MLflow URIs and leaves
    them so, whatever an earlier test pointed them at (often a server it has since stopped)."""
    _reset_mlflow_uris(_MLFLOW_ENV_AT_START)
    yield
    _reset_mlflow_uris(_MLFLOW_ENV_AT_START)


@pytest.fixture(autouse=True)
def _clean_telemetry_env(monkeypatch, tmp_path):
    """Each test starts without OTEL_*/OBSERVATORY_* settings from the caller's shell, in its own
    working directory, and ends with telemetry shut down."""
    for var in list(os.environ):
        if var.startswith(("OTEL_", "OBSERVATORY_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("OBSERVATORY_STATE_DIR", str(tmp_path / "state"))
    # The usage ledger is on by default (a shipper process per gateway process); tests of other parts
    # hold the app the gateway builds without it. The ledger's own tests, the demo's and the dashboards'
    # turn it on (tests/serving_hooks/test_ledger.py checks the default).
    monkeypatch.setenv("OBSERVATORY_SERVE_LEDGER_ENABLED", "false")
    monkeypatch.chdir(tmp_path)
    yield
    from gpt_observatory import telemetry
    telemetry.shutdown()
