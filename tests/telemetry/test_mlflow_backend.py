"""Spans into a real MLflow tracking server: the ``mlflow`` backend and plain ``otlp`` over
HTTP/protobuf to the server's ``/v1/traces``."""

from __future__ import annotations

import mlflow
import pytest
from opentelemetry import trace

from gpt_observatory import telemetry
from gpt_observatory.telemetry.backends.mlflow import EXPERIMENT_HEADER
from tests.components import wait_for


def _trace_names(server_url: str, experiment_id: str) -> set[str]:
    mlflow.set_tracking_uri(server_url)
    traces = mlflow.search_traces(locations=[experiment_id], return_type="list")
    return {span.name for t in traces for span in t.data.spans}


def test_mlflow_backend_spans_are_found_with_search_traces(mlflow_server):
    handle = telemetry.configure(
        "mlflow-backend", traces_exporter=["mlflow"], metrics_exporter=["none"], logs_exporter=["none"],
        mlflow_tracking_uri=mlflow_server.url, mlflow_experiment_name="backend-test",
    )
    tracer = trace.get_tracer("t")
    with tracer.start_as_current_span("via-mlflow-backend"), tracer.start_as_current_span("child-span"):
        pass
    handle.shutdown()
    mlflow.set_tracking_uri(mlflow_server.url)
    exp_id = mlflow.get_experiment_by_name("backend-test").experiment_id
    found = wait_for(lambda: _trace_names(mlflow_server.url, exp_id), what="trace in MLflow")
    assert {"via-mlflow-backend", "child-span"} <= found


def test_otlp_http_to_mlflow_v1_traces(mlflow_server):
    mlflow.set_tracking_uri(mlflow_server.url)
    exp_id = mlflow.create_experiment("otlp-http-test")
    handle = telemetry.configure(
        "otlp-http", traces_exporter=["otlp"], metrics_exporter=["none"], logs_exporter=["none"],
        otlp_protocol="http/protobuf", otlp_traces_endpoint=f"{mlflow_server.url}/v1/traces",
        otlp_headers={EXPERIMENT_HEADER: exp_id},
    )
    with trace.get_tracer("t").start_as_current_span("via-otlp-http"):
        pass
    handle.shutdown()
    assert handle.stats.failures("traces") == 0
    assert "via-otlp-http" in wait_for(lambda: _trace_names(mlflow_server.url, exp_id), what="trace in MLflow")


def test_mlflow_backend_without_a_server_fails_at_configure():
    with pytest.raises(telemetry.ConfigError, match="mlflow_tracking_uri"):
        telemetry.configure("x", traces_exporter=["mlflow"], mlflow_tracking_uri="sqlite:///local.db")
