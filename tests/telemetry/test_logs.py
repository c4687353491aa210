"""The loguru bridge: correlation, stdlib routing, and no recursion from telemetry that logs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from loguru import logger
from opentelemetry import trace

from gpt_observatory import telemetry
from gpt_observatory.telemetry.redact import MASK

MEMORY = {"traces_exporter": ["memory"], "metrics_exporter": ["none"], "logs_exporter": ["memory"]}


def test_records_in_a_span_carry_its_ids_and_outside_none():
    handle = telemetry.configure("logs", **MEMORY)
    logger.info("outside")
    with trace.get_tracer("t").start_as_current_span("s") as span:
        logger.bind(tenant="acme").info("inside")
    records = {r.log_record.body: r.log_record for r in handle.memory.logs()}
    assert records["inside"].trace_id == span.get_span_context().trace_id
    assert records["inside"].span_id == span.get_span_context().span_id
    assert records["inside"].attributes["tenant"] == "acme"
    assert not records["outside"].trace_id


def test_stdlib_logging_takes_the_same_path():
    handle = telemetry.configure("logs", **MEMORY)
    logging.getLogger("thirdparty.lib").warning("via stdlib %s", "args")
    (rec,) = [r.log_record for r in handle.memory.logs() if r.log_record.body == "via stdlib args"]
    assert rec.severity_text == "WARNING" and rec.attributes["logger.name"] == "thirdparty.lib"
    assert rec.attributes["code.file.path"].endswith("test_logs.py")


def test_a_log_emitted_while_exporting_a_log_does_not_recurse():
    handle = telemetry.configure("logs", **MEMORY)
    exporter = handle.memory.log_exporter
    original = exporter.export

    def noisy_export(batch):
        logger.warning("exporter logs while exporting")  # would recurse without the guard
        return original(batch)

    exporter.export = noisy_export
    logger.info("first")
    bodies = [r.log_record.body for r in handle.memory.logs()]
    assert bodies == ["first"]


def test_shutdown_removes_the_sinks():
    handle = telemetry.configure("logs", **MEMORY)
    handle.shutdown()
    logger.info("after shutdown")
    assert all(r.log_record.body != "after shutdown" for r in handle.memory.logs())


API_KEY = "obs_Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA"
BEARER_TOKEN = "s3cr3t-opaque-access-token-value"
URL_PASSWORD = "hunter2-in-a-url"


@pytest.mark.parametrize("console_format", ["human", "json"])
def test_the_console_masks_credentials_in_messages_extras_and_tracebacks(capfd, console_format):
    telemetry.configure("logs", console_logs=True, console_format=console_format, traces_exporter=["none"],
                        metrics_exporter=["none"], logs_exporter=["none"])
    upstream = f"http://gateway:{URL_PASSWORD}@upstream.internal:8000/v1"
    logger.bind(api_key=API_KEY, upstream=upstream).warning("calling {} with Bearer {}", upstream, BEARER_TOKEN)
    try:
        raise ConnectionError(f"{upstream} refused key {API_KEY} (Authorization: Bearer {BEARER_TOKEN})")
    except ConnectionError:
        logger.exception("upstream failed")
    logging.getLogger("thirdparty.client").error("retrying %s", upstream)

    err = capfd.readouterr().err
    assert "upstream failed" in err and "ConnectionError" in err and "retrying" in err
    for secret in (API_KEY, BEARER_TOKEN, URL_PASSWORD):
        assert secret not in err
    assert MASK in err and "upstream.internal:8000" in err  # masked in place, the rest kept


def test_a_server_logger_someone_gave_its_own_handler_goes_through_the_redaction_too(capfd):
    # Prefect's logging.yml gives "uvicorn" a console handler that does not propagate: a handler's
    # traceback logged on "uvicorn.error" would reach stderr around the masking.
    uvicorn = logging.getLogger("uvicorn")
    own = logging.StreamHandler(sys.stderr)
    uvicorn.addHandler(own)
    uvicorn.propagate = False
    before = uvicorn.handlers[:]  # others may be there too (Prefect's, once a flow ran in this process)
    try:
        telemetry.configure("logs", console_logs=True, traces_exporter=["none"], metrics_exporter=["none"],
                            logs_exporter=["none"])
        try:
            raise RuntimeError(f"handler bug with key {API_KEY}")
        except RuntimeError:
            logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
        telemetry.shutdown()
        err = capfd.readouterr().err
        assert err.count("Exception in ASGI application") == 1 and API_KEY not in err and MASK in err
        assert uvicorn.handlers == before and uvicorn.propagate is False  # given back as it was
    finally:
        uvicorn.removeHandler(own)
        uvicorn.propagate = True


_UNCAUGHT = """
import threading
from gpt_observatory import telemetry
telemetry.configure("crash", traces_exporter=["none"], metrics_exporter=["none"], logs_exporter=["none"])
def fail():
    raise RuntimeError("thread held {key}")
thread = threading.Thread(target=fail, name="worker")
thread.start()
thread.join()
raise ValueError("main held {key} and http://u:{password}@db.internal/x")
"""


def test_an_uncaught_traceback_on_stderr_is_masked(tmp_path):
    script = _UNCAUGHT.format(key=API_KEY, password=URL_PASSWORD)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "OBSERVATORY_STATE_DIR": str(tmp_path / "state")})
    assert run.returncode == 1
    assert "Exception in thread worker" in run.stderr and "RuntimeError: thread held" in run.stderr
    assert "ValueError: main held" in run.stderr and "db.internal/x" in run.stderr
    assert API_KEY not in run.stderr and URL_PASSWORD not in run.stderr and MASK in run.stderr
