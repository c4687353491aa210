"""SIGTERM while the OTLP collector accepts connections and never answers: the gateway still exits
within its graceful timeout (the providers flush in parallel against one deadline; before, they
shut down one after another with the SDK's 30 s each, 46.6 s in all)."""

from __future__ import annotations

import time

import pytest

from tests import components
from tests.reliability.support import GatewayProcess, call
from tests.reliability.test_otlp_outage import Blackhole

pytestmark = pytest.mark.filterwarnings("ignore:Add type hints")  # the slow pyfunc is untyped on purpose

GRACEFUL_S = 5.0
SLACK_S = 3.0  # the interpreter's own exit and the signal's delivery, on a loaded 2-core machine


def _gateway(workdir, reg, env) -> GatewayProcess:
    port = components.free_port()
    state = workdir / "state"
    cmd = [components.require_binary("observatory"), "serve", "--model", reg.model, "--tracking-uri", reg.uri,
           "--port", str(port), "--api-keys-file", str(reg.keys_file), "--graceful-timeout", f"{GRACEFUL_S:g}"]
    env = {"OBSERVATORY_STATE_DIR": str(state), "MLFLOW_TRACKING_URI": reg.uri, "MLFLOW_REGISTRY_URI": reg.uri, **env}
    proc = components.start_process(cmd, workdir / "gateway.log", env=env, cwd=workdir)
    return GatewayProcess(f"http://127.0.0.1:{port}", proc, workdir / "gateway.log", state)


@pytest.mark.timeout(180)
def test_sigterm_with_a_collector_that_never_answers_exits_within_the_graceful_timeout(slow_registry, tmp_path):
    reg = slow_registry
    hole = Blackhole(components.free_port())
    hole.start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{hole.port}", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    gw = _gateway(tmp_path, reg, env)
    try:
        gw.wait_ready("1")
        assert call(gw.url, reg.key, reg.model, 2, stream=False).ok  # a span, logs and metrics to flush
        gw.sigterm()
        start = time.monotonic()
        returncode = gw.proc.wait(60)
        elapsed = time.monotonic() - start
    finally:
        gw.stop()
        hole.stop()

    print(f"exit {elapsed:.2f} s after SIGTERM (graceful timeout {GRACEFUL_S:g} s)")
    assert returncode == 0, gw.tail()
    assert elapsed <= GRACEFUL_S + SLACK_S, f"exit took {elapsed:.1f} s:\n{gw.tail()}"
    # It was the exporters that hung, and the gateway said so rather than waiting on them.
    assert "did not finish shutting down" in gw.tail(), gw.tail()
    assert "Traceback" not in gw.tail()
