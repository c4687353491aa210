"""``mlflow``: traces as OTLP/HTTP to an MLflow tracking server's ``/v1/traces``.

The experiment is ``mlflow_experiment_id``, or the experiment named ``mlflow_experiment_name``
(created if missing), resolved once at configure time over MLflow's REST API.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import httpx
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExporter

from gpt_observatory.telemetry.backends._base import SettingsBackend
from gpt_observatory.telemetry.settings import ConfigError, Settings, load

EXPERIMENT_HEADER = "x-mlflow-experiment-id"


def tracking_uri(settings: Settings) -> str:
    uri = settings.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        raise ConfigError(
            "the mlflow backend needs an MLflow tracking *server*: set mlflow_tracking_uri "
            f"(OBSERVATORY_MLFLOW_TRACKING_URI or MLFLOW_TRACKING_URI) to http(s)://host:port, got {uri!r}"
        )
    return uri.rstrip("/")


def experiment_id(base: str, settings: Settings) -> str:
    if settings.mlflow_experiment_id:
        return settings.mlflow_experiment_id
    name = settings.mlflow_experiment_name
    with httpx.Client(base_url=base, timeout=settings.otlp_timeout_ms / 1000) as http:
        r = http.get("/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name})
        if r.status_code == 200:
            return r.json()["experiment"]["experiment_id"]
        r = http.post("/api/2.0/mlflow/experiments/create", json={"name": name})
        if r.status_code == 200:
            return r.json()["experiment_id"]
        raise ConfigError(f"mlflow backend: cannot find or create experiment {name!r} at {base}: {r.text[:200]}")


class MlflowSpanExporter(SettingsBackend, SpanExporter):
    def __init__(self, settings: Settings | None = None):
        settings = settings or load()
        base = tracking_uri(settings)
        try:
            self.experiment_id = experiment_id(base, settings)
        except httpx.HTTPError as e:
            raise ConfigError(f"mlflow backend: tracking server {base} unreachable: {e}") from e
        self.inner = OTLPSpanExporter(
            endpoint=f"{base}/v1/traces",
            headers={EXPERIMENT_HEADER: self.experiment_id},
            timeout=settings.otlp_timeout_ms / 1000,
        )

    def export(self, spans: Sequence[Any]) -> Any:
        return self.inner.export(spans)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
