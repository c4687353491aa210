"""Where the flows keep things: the MLflow tracking/registry store and its artifacts.

Embedded default: ``sqlite:///<state>/mlflow.db`` with artifacts in ``<state>/mlartifacts``;
``MLFLOW_TRACKING_URI`` (or the ``tracking_uri`` setting) points elsewhere, e.g. a shared
``mlflow server`` on PostgreSQL. Prefect needs nothing here: without ``PREFECT_API_URL`` it
runs its own local ephemeral API.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from gpt_observatory.flows.settings import PipelineSettings
from gpt_observatory.telemetry import state_dir


def tracking_uri(settings: PipelineSettings) -> str:
    """The ``tracking_uri`` setting, else ``MLFLOW_TRACKING_URI``, else SQLite in the state folder."""
    return settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state_dir() / 'mlflow.db'}"


def artifact_root() -> Path:
    return state_dir() / "mlartifacts"


def client_for(uri: str) -> MlflowClient:
    """A client on ``uri`` for tracking and registry alike (the flows keep both in one store).

    ``MlflowClient(uri)`` alone takes its registry from the process-wide registry URI (and
    ``MLFLOW_REGISTRY_URI``, which ``mlflow.set_registry_uri`` also sets), i.e. from whichever
    store was used last.
    """
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def use(uri: str) -> None:
    """Point MLflow's fluent API (pyfunc logging and loading use it) at ``uri``."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def connect(settings: PipelineSettings) -> MlflowClient:
    """The configured store, created if it is the embedded SQLite default."""
    uri = tracking_uri(settings)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    use(uri)
    return client_for(uri)


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's id, created on first use (with artifacts beside a local database)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if client.tracking_uri.startswith("sqlite:"):
        location = (artifact_root() / name).resolve().as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        again = client.get_experiment_by_name(name)
        if again is None:
            raise
        return str(again.experiment_id)
