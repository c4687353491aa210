"""``observatory logs`` as a user runs it: records the real backend wrote, filters, formats, errors."""

from __future__ import annotations

import json

import orjson
import pytest
from loguru import logger
from opentelemetry import trace
from typer.testing import CliRunner

from gpt_observatory import telemetry
from gpt_observatory.commands.logs import app
from gpt_observatory.telemetry import names
from tests.telemetry.reading.test_records import COLLECTOR_LOGS


@pytest.fixture
def state(tmp_path):
    """Records from two services through the real logging path, one of them inside a span."""
    handle = telemetry.configure("gateway", traces_exporter=["memory"], metrics_exporter=["none"])
    logger.bind(**{names.TENANT: "acme", names.GEN_AI_REQUEST_MODEL: "gpt-small"}).info("request accepted")
    with trace.get_tracer("t").start_as_current_span("s") as span:
        logger.bind(**{names.TENANT: "globex"}).warning("upstream slow")
    logger.error("upstream failed")
    handle.shutdown()
    handle = telemetry.configure("idp", traces_exporter=["none"], metrics_exporter=["none"])
    logger.bind(**{names.TENANT: "acme"}).info("token issued")
    handle.shutdown()
    return {"dir": tmp_path / "state" / "telemetry", "trace_id": format(span.get_span_context().trace_id, "032x")}


def _run(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, list(args), env=env)


def _messages(result) -> list[str]:
    return [json.loads(line)["message"] for line in result.stdout.splitlines()]


def test_plain_lines_show_time_service_level_trace_and_default_attributes(state):
    result = _run()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and "\x1b[" not in result.stdout
    accepted = next(line for line in lines if "request accepted" in line)
    assert "gateway" in accepted and "INFO" in accepted and "--------" in accepted
    assert f"{names.TENANT}=acme" in accepted and f"{names.GEN_AI_REQUEST_MODEL}=gpt-small" in accepted
    slow = next(line for line in lines if "upstream slow" in line)
    assert state["trace_id"][:8] in slow


def test_filters(state):
    assert _messages(_run("--json", "--tenant", "acme")) == ["request accepted", "token issued"]
    assert _messages(_run("--json", "--service", "idp")) == ["token issued"]
    assert _messages(_run("--json", "--service", "idp,gateway", "--level", "warning")) == [
        "upstream slow",
        "upstream failed",
    ]
    assert _messages(_run("--json", "--model", "gpt-small")) == ["request accepted"]
    assert _messages(_run("--json", "--trace", state["trace_id"][:6].upper())) == ["upstream slow"]
    assert _messages(_run("--json", "--grep", "^upstream (f|x)")) == ["upstream failed"]
    assert _messages(_run("--json", "-n", "1")) == ["token issued"]
    assert _messages(_run("--json", "--since", "1h")) == _messages(_run("--json"))
    assert _messages(_run("--json", "--until", "1h")) == []
    assert _messages(_run("--json", "--since", "2000-01-01T00:00:00Z", "--until", "2000-01-02")) == []


def test_json_lines_and_chosen_fields(state):
    result = _run("--json", "--fields", f"{names.TENANT}", "--tenant", "globex")
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["attributes"] == {names.TENANT: "globex"}
    assert record["service"] == "gateway" and record["level"] == "WARNING" and record["trace_id"] == state["trace_id"]
    text = _run("--fields", "logger.name", "--tenant", "globex").stdout
    assert "logger.name=" in text and f"{names.TENANT}=" not in text


def test_no_colour_with_no_color_even_when_a_terminal_is_claimed(state):
    result = _run("--service", "gateway", env={"NO_COLOR": "1", "FORCE_COLOR": "1", "TERM": "xterm-256color"})
    assert result.exit_code == 0 and "\x1b[" not in result.stdout


def test_a_collector_file_as_source(tmp_path):
    path = tmp_path / "otel-logs.json"
    path.write_bytes(orjson.dumps(COLLECTOR_LOGS) + b"\n" + b"not json\n")
    result = _run("--json", "--source", str(path), "--level", "error")
    assert result.exit_code == 0
    assert _messages(result) == ["token rejected"]
    assert "skipped 1 line" in result.stderr


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--since", "yesterday"], "--since"),
        (["--until", "3 fortnights"], "--until"),
        (["--since", "1m", "--until", "1h"], "before --since"),
        (["--level", "loud"], "unknown level"),
        (["--grep", "(unclosed"], "not a regular expression"),
        (["--trace", "xyz"], "not a hex trace id"),
        (["-n", "-3"], "-n"),
    ],
)
def test_bad_options_exit_2_naming_the_option(args, complaint):
    result = _run(*args)
    assert result.exit_code == 2
    assert complaint in result.output


def test_a_missing_source_exits_1_with_what_to_do(tmp_path):
    result = _run("--source", str(tmp_path / "nowhere"))
    assert result.exit_code == 1 and "--source" in result.stderr
