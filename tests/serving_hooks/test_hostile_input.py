"""Hostile input that used to reach code before validation: each must be a clear 4xx, and a traceback
on the console must not print the locals that hold a caller's credential."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_observatory.serving_hooks.context import prompt_bytes
from gpt_observatory.serving_hooks.gateway import GatewayConfig, GatewayMiddleware
from tests.serving_hooks.support import serve
from tests.serving_hooks.test_gateway import ROUTES, EchoApp

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(["messages", "prompt", "model", "content"]), json_values))
def test_the_token_estimate_reads_any_json_object_without_failing(body):
    # The gateway estimates prompt tokens before the request model validates the body.
    assert prompt_bytes(body) >= 0


def test_a_repeated_authorization_header_is_a_400_and_reaches_nothing(memory_telemetry):
    app = EchoApp()
    with serve(GatewayMiddleware(app, GatewayConfig(routes=ROUTES)), lifespan="off") as gw:
        headers = [("authorization", "Bearer first"), ("authorization", "Bearer second")]
        answer = httpx.post(gw.url + "/v1/echo", json={"model": "m"}, headers=headers)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "duplicate_header"
    assert "first" not in answer.text and "second" not in answer.text
    assert app.calls == 0


def test_a_logged_traceback_does_not_print_the_locals_that_hold_a_secret(tmp_path):
    needle = "obs_needle_" + "Q" * 30
    script = textwrap.dedent("""
        import os
        from loguru import logger
        from gpt_observatory import telemetry
        telemetry.configure("leak-scan", traces_exporter=["memory"], metrics_exporter=["memory"],
                            logs_exporter=["memory"], console_logs=True)
        def handle(authorization):
            raise ValueError("refused" if authorization else "no credential")
        try:
            handle(os.environ["NEEDLE"])  # not in the source text: only a printed local can show it
        except ValueError:
            logger.exception("request failed")
        telemetry.shutdown()
    """)
    env = {**os.environ, "OBSERVATORY_STATE_DIR": str(tmp_path), "NEEDLE": needle}
    path = tmp_path / "handler.py"  # a file: loguru annotates locals only where it can read the source
    path.write_text(script)
    run = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    assert "request failed" in run.stderr and "ValueError: refused" in run.stderr
    assert needle not in run.stderr and needle not in run.stdout
