"""No credential leaves the process, whichever backend exports it."""

from __future__ import annotations

import json

import mlflow
import pytest
from loguru import logger
from opentelemetry import metrics, trace

from gpt_observatory import telemetry
from gpt_observatory.telemetry.redact import MASK, Redactor

JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhbGljZSIsInRlbmFudCI6ImFjbWUifQ.c2lnbmF0dXJlLWJ5dGVz"
API_KEY = "obs_Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA"
BEARER = "Bearer s3cr3t-opaque-access-token-value"
SECRETS = (JWT, API_KEY, "s3cr3t-opaque-access-token-value", "hunter2-password")


def _emit_seeded() -> None:
    tracer = trace.get_tracer("seed")
    with tracer.start_as_current_span(
        "seeded",
        attributes={
            "http.request.header.authorization": BEARER,
            "http.request.header.x-api-key": API_KEY,
            "db.password": "hunter2-password",
            "note": f"caller sent {JWT}",
            "gen_ai.token.type": "input",
        },
    ) as span:
        span.add_event("retry", {"detail": f"Authorization: {BEARER}"})
        logger.bind(api_key=API_KEY).info("calling upstream with {} and key {}", BEARER, API_KEY)
        logger.warning("token was {}", JWT)
    metrics.get_meter("seed").create_counter("observatory.gateway.requests").add(1, {"leak": BEARER})


def _assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
    assert MASK in text


def test_redactor_keeps_token_counts_and_masks_credentials():
    r = Redactor()
    masked = r.attributes({"gen_ai.token.type": "output", "gen_ai.usage.input_tokens": 5, "Cookie": "a=b",
                           "x": f"Bearer {JWT}", "client_secret": "zzz"})
    assert masked["gen_ai.token.type"] == "output" and masked["gen_ai.usage.input_tokens"] == 5
    assert masked["Cookie"] == masked["client_secret"] == MASK and JWT not in masked["x"]
    clean = {"a": "b"}
    assert r.attributes(clean) is clean  # nothing copied when nothing needs masking


def test_jsonl_and_console_exports_hold_no_secret(tmp_path, capfd):
    handle = telemetry.configure("redact", console_logs=True, traces_exporter=["jsonl", "console"],
                                 metrics_exporter=["jsonl", "console"], logs_exporter=["jsonl", "console"])
    _emit_seeded()
    handle.shutdown()
    folder = tmp_path / "state" / "telemetry"
    for name in ("traces", "logs", "metrics"):
        _assert_clean((folder / f"{name}.jsonl").read_text())
    out = capfd.readouterr()
    _assert_clean(out.out + out.err)
    spans = [json.loads(line) for line in (folder / "traces.jsonl").read_text().splitlines()]
    assert spans[0]["attributes"]["gen_ai.token.type"] == "input"


def test_memory_export_holds_no_secret():
    handle = telemetry.configure("redact", traces_exporter=["memory"], metrics_exporter=["none"],
                                 logs_exporter=["memory"])
    _emit_seeded()
    # The memory backend stores what reached the exporter, i.e. after masking.
    text = repr([dict(s.attributes) for s in handle.memory.spans()]) + repr(
        [(lr.log_record.body, dict(lr.log_record.attributes)) for lr in handle.memory.logs()]
    ) + repr([dict(e.attributes) for s in handle.memory.spans() for e in s.events])
    _assert_clean(text)


def test_otlp_grpc_export_holds_no_secret(otlp_receiver):
    handle = telemetry.configure("redact", otlp_endpoint=otlp_receiver.endpoint, metric_export_interval_ms=60_000)
    _emit_seeded()
    handle.shutdown()
    text = repr(otlp_receiver.spans) + repr(otlp_receiver.logs) + repr(otlp_receiver.metrics)
    assert "seeded" in text
    _assert_clean(text)


@pytest.mark.usefixtures("mlflow_server")
def test_mlflow_backend_export_holds_no_secret(mlflow_server):
    handle = telemetry.configure("redact", traces_exporter=["mlflow"], metrics_exporter=["none"],
                                 logs_exporter=["none"], mlflow_tracking_uri=mlflow_server.url,
                                 mlflow_experiment_name="redaction")
    _emit_seeded()
    handle.shutdown()
    mlflow.set_tracking_uri(mlflow_server.url)
    exp = mlflow.get_experiment_by_name("redaction").experiment_id
    traces = mlflow.search_traces(locations=[exp], return_type="list")
    text = json.dumps([t.to_dict() for t in traces], default=str)
    assert "seeded" in text
    _assert_clean(text)
