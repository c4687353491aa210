"""Fixtures for the reliability suite: a registry holding the slow model, API keys, and the
session's demo run. Every component is real: ``observatory serve`` processes, ``mlflow server``,
an OTLP/gRPC receiver built from opentelemetry-proto's services."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.demo_run import DemoRun, demo_run
from tests.reliability.support import api_key, register_slow_model, set_champion

MODEL = "slow-echo"
DELAY_S = 0.01  # per token: max_tokens sets how long a request takes


@dataclass(frozen=True)
class SlowRegistry:
    """A SQLite MLflow store whose ``slow-echo@champion`` is v1 (answers start with ``a``)."""

    uri: str
    model: str
    keys_file: Path
    key: str


@pytest.fixture(scope="session")
def slow_registry(tmp_path_factory) -> SlowRegistry:
    root = tmp_path_factory.mktemp("slow-registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    version = register_slow_model(uri, MODEL, "a", DELAY_S, artifacts=root / "artifacts")
    set_champion(uri, MODEL, version)
    keys = root / "api-keys.json"
    return SlowRegistry(uri, MODEL, keys, api_key(keys))


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> DemoRun:
    return demo_run(tmp_path_factory.mktemp("demo"))
