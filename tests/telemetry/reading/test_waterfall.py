"""The waterfall of a collector ``file`` exporter's trace: spans under their parents on one time
axis, each span's logs under it in time order, orphans at the root, failures marked."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from gpt_observatory.telemetry.reading.traces import find, latest_failed, to_otlp
from gpt_observatory.telemetry.reading.waterfall import BAR_WIDTH, ordered, render

FIXTURE = Path(__file__).parent / "data" / "otelcol"
SERVER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def text_of(table) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=220, color_system=None).print(table)
    return [line.rstrip() for line in out.getvalue().splitlines()]


def test_spans_nest_under_their_parents_and_orphans_sit_at_the_root():
    trace = find(FIXTURE, SERVER_TRACE)
    assert [(depth, s.name) for depth, s in ordered(trace)] == [
        (0, "POST /v1/chat/completions"),
        (1, "auth.verify"),
        (1, "chat up-model"),
        (2, "POST /v1/chat/completions"),  # the upstream's SERVER span, another service
        (0, "flush usage"),  # its parent is not in the file
    ]


def test_each_span_has_its_bar_duration_attributes_and_logs_in_time_order():
    lines = text_of(render(find(FIXTURE, SERVER_TRACE)))
    assert lines[0].startswith(f"trace {SERVER_TRACE}  POST /v1/chat/completions (observatory-gateway)  182.5 ms")
    body = [line for line in lines[2:] if line]
    server, warning, auth, genai, started, finished, upstream, orphan, orphan_log = body
    assert server.startswith("POST /v1/chat/completions  server · observatory-gateway")
    assert "tenant=acme http=200 replica=gw-1" in server and "182.5 ms" in server
    assert "█" * BAR_WIDTH in server  # the root spans the whole axis
    assert warning.startswith("  ↳ 15:40:00.000 WARNING") and "rate-limit storage failed" in warning
    assert auth.startswith("  auth.verify  internal") and "0.70 ms" in auth
    assert genai.startswith("  chat up-model  client") and "model=up-model tokens=7→5 server=vllm-0.vllm:8001" in genai
    assert started.startswith("    ↳ 15:40:00.090 INFO") and started.endswith("upstream stream started")
    assert finished.startswith("    ↳ 15:40:00.180 INFO") and finished.endswith("upstream stream finished: 5 chunks")
    assert upstream.startswith("    POST /v1/chat/completions  server · vllm") and "http=200" in upstream
    assert orphan.startswith("flush usage  internal")
    bar = orphan[orphan.index("█") - 1:]
    assert bar.startswith(" ██") and "10.0 ms" in orphan  # 150-160 ms of 182.5: late on the axis
    assert orphan_log.startswith("↳ 15:40:00.170 DEBUG") and "a log of a span that is not in the file" in orphan_log
    assert not any("API key file changed" in line for line in lines)  # not in this trace


def test_a_failed_request_is_marked_with_its_error():
    (trace,) = latest_failed(FIXTURE)
    lines = text_of(render(trace))
    server = next(line for line in lines if line.startswith("POST"))
    genai = next(line for line in lines if "chat fail-500" in line)
    assert "ERROR" in server and "http=502" in server  # HTTP 5xx alone marks it failed
    assert "ERROR: 500" in genai and "error=500" in genai
    assert any("↳" in line and "upstream answered HTTP 500" in line for line in lines)


def test_otlp_json_groups_spans_by_resource_and_scope_as_the_collector_does():
    document = to_otlp(find(FIXTURE, SERVER_TRACE))
    by_service = {
        next(a["value"]["stringValue"] for a in rs["resource"]["attributes"] if a["key"] == "service.name"): rs
        for rs in document["resourceSpans"]
    }
    assert set(by_service) == {"observatory-gateway", "vllm"}
    scopes = {ss["scope"]["name"]: ss["spans"] for ss in by_service["observatory-gateway"]["scopeSpans"]}
    genai = scopes["gpt_observatory.serving_hooks.inference"][0]
    assert genai["kind"] == 3 and genai["parentSpanId"] == "a1a1a1a1a1a1a1a1"
    usage = {a["key"]: a["value"] for a in genai["attributes"]}
    assert usage["gen_ai.usage.input_tokens"] == {"intValue": "7"}
    assert usage["gen_ai.request.stream"] == {"boolValue": True}
    assert usage["gen_ai.response.finish_reasons"] == {"arrayValue": {"values": [{"stringValue": "stop"}]}}
    original = (FIXTURE / "traces.json").read_text().splitlines()[0]
    assert '"startTimeUnixNano":"' + genai["startTimeUnixNano"] + '"' in original
