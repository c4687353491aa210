"""``observatory trace`` through the CLI: a real upstream-mode gateway's streamed request read back
from the jsonl files, a collector ``file`` exporter's output, prefixes, --json, exit statuses."""

from __future__ import annotations

import json
import re

import openai
import orjson
import pytest
from typer.testing import CliRunner

from gpt_observatory.cli import _register, app
from gpt_observatory.telemetry.reading import parse_spans
from tests.components import free_port
from tests.serving_hooks.support import serve
from tests.serving_hooks.upstream_peer import UpstreamPeer
from tests.telemetry.reading.test_waterfall import FIXTURE, SERVER_TRACE

runner = CliRunner()
_register()


def trace(*args: str):
    return runner.invoke(app, ["trace", *args])


def rows(output: str) -> list[str]:
    """The waterfall's rows without the title and header, right-trimmed."""
    return [line.rstrip() for line in output.splitlines()[2:] if line.strip()]


@pytest.fixture(scope="module")
def upstream():
    with UpstreamPeer() as peer:
        yield peer


@pytest.fixture
def gateway_files(state_dir, upstream, tmp_path):
    """A real gateway in upstream mode on jsonl telemetry in a temp state dir, with a rate-limit
    store that is down (the request logs a warning under its SERVER span and is admitted)."""
    from gpt_observatory import telemetry
    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore
    from gpt_observatory.serving_hooks.app import create_app
    from gpt_observatory.serving_hooks.settings import load

    keys = ApiKeyStore(tmp_path / "api-keys.json")
    key, _ = keys.create("acme", ["inference"])
    telemetry.configure(
        "observatory-gateway", traces_exporter=["jsonl"], logs_exporter=["jsonl"], metrics_exporter=["memory"],
        gpu_enabled=False,
    )
    settings = load(backend="upstream", upstream_url=upstream.url, model="up-model", upstream_timeout_s=5, api_keys_file=keys.path,
                    redis_url=f"redis://127.0.0.1:{free_port()}/0", requests_per_minute=1000)
    with serve(create_app(settings)) as served:
        client = openai.OpenAI(base_url=served.v1, api_key=key, max_retries=0)
        chunks = list(client.chat.completions.create(
            model="up-model", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=3
        ))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "t0t1t2"
    trace_id = upstream.seen[-1]["headers"]["traceparent"].split("-")[1]
    telemetry.shutdown()  # flushes the batch processors into the files
    return state_dir / "telemetry", trace_id


def test_last_shows_a_streamed_request_through_the_gateway_in_parent_order_with_its_logs(gateway_files, artifacts_dir):
    source, trace_id = gateway_files
    result = trace("--last", "--source", str(source))
    assert result.exit_code == 0, result.output
    (artifacts_dir / "observatory-trace-last.txt").write_text(result.output)
    assert f"trace {trace_id}" in result.output
    lines = rows(result.output)
    spans = [line for line in lines if "↳" not in line]
    assert spans[0].startswith("POST /v1/chat/completions  server")
    assert "tenant=acme" in spans[0] and "http=200" in spans[0]
    children = {line.strip().split("  ")[0]: line for line in spans[1:]}
    assert set(children) == {"auth.verify", "chat up-model"}  # no other span: the GenAI span is the CLIENT span
    assert all(line.startswith("  ") and not line.startswith("   ") for line in children.values())
    assert "client ·" in children["chat up-model"] and "tokens=7→3" in children["chat up-model"]
    assert lines.index(children["auth.verify"]) < lines.index(children["chat up-model"])
    # The rate-limit store's warning was logged while the SERVER span was current: it sits right
    # under that span, indented one level, before the children.
    warning = next(i for i, line in enumerate(lines) if "rate-limit storage failed" in line)
    assert warning == 1 and lines[warning].startswith("  ↳ ") and "WARNING" in lines[warning]


def test_json_is_otlp_that_reads_back_as_the_same_spans(gateway_files):
    source, trace_id = gateway_files
    result = trace(trace_id[:8], "--json", "--source", str(source))
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    spans = parse_spans(orjson.dumps(document))
    assert {s.name for s in spans} == {"POST /v1/chat/completions", "auth.verify", "chat up-model"}
    assert {s.trace_id for s in spans} == {trace_id}
    assert {s.kind for s in spans} == {"SERVER", "INTERNAL", "CLIENT"}
    first = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert isinstance(first["kind"], int) and isinstance(first["startTimeUnixNano"], str)


def test_the_collector_file_exporter_output_gives_the_same_view():
    result = trace(SERVER_TRACE[:6], "--source", str(FIXTURE))
    assert result.exit_code == 0, result.output
    assert "chat up-model  client" in result.output and "upstream stream started" in result.output
    failed = trace("--errors", "--source", str(FIXTURE))
    assert failed.exit_code == 0 and "chat fail-500" in failed.output and "upstream answered HTTP 500" in failed.output
    slowest = trace("--slow", "2", "--source", str(FIXTURE))
    assert [m for m in re.findall(r"trace ([0-9a-f]{32})", slowest.output)] == [
        "00f067aa0ba902b7a3ce929d0e0e4799", SERVER_TRACE
    ]
    assert trace("--slow", "1", "--since", "1h", "--source", str(FIXTURE)).exit_code == 1  # the fixture is older
    one_file = trace("--last", "--source", str(FIXTURE / "traces.json"))  # the logs beside it are found
    assert one_file.exit_code == 0 and "upstream answered HTTP 500" in one_file.output


def test_an_ambiguous_prefix_lists_the_candidates(tmp_path):
    lines = (FIXTURE / "traces.json").read_text().splitlines()
    twin = lines[1].replace("00f067aa0ba902b7a3ce929d0e0e4799", "00f067aa0ba902b7a3ce929d0e0e4700")
    (tmp_path / "traces.json").write_text("\n".join([*lines, twin]) + "\n")
    result = trace("00f0", "--source", str(tmp_path))
    assert result.exit_code == 1
    assert "2 traces start with 00f0" in result.output
    assert "00f067aa0ba902b7a3ce929d0e0e4700" in result.output and "00f067aa0ba902b7a3ce929d0e0e4799" in result.output
    assert trace("00f067aa0ba902b7a3ce929d0e0e4700", "--source", str(tmp_path)).exit_code == 0


def test_missing_traces_exit_1_and_bad_options_exit_2(tmp_path):
    missing = trace("abc123", "--source", str(FIXTURE))
    assert missing.exit_code == 1 and missing.output.strip() == f"observatory trace: no trace abc123 in {FIXTURE}"
    assert trace("--last", "--source", str(tmp_path / "nowhere")).exit_code == 1
    assert trace("--last", "--source", str(tmp_path)).exit_code == 1  # an empty folder
    assert trace("not-hex", "--source", str(FIXTURE)).exit_code == 1
    assert trace("--source", str(FIXTURE)).exit_code == 2  # nothing chosen
    assert trace("--last", "--slow", "3", "--source", str(FIXTURE)).exit_code == 2
    assert trace("--slow", "0", "--source", str(FIXTURE)).exit_code == 2
    assert trace("--last", "--since", "10m", "--source", str(FIXTURE)).exit_code == 2
    assert trace("--slow", "2", "--since", "yesterday", "--source", str(FIXTURE)).exit_code == 2
