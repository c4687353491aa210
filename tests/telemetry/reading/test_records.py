"""One line of either format in, plain records out."""

from __future__ import annotations

import orjson
import pytest

from gpt_observatory.telemetry.reading import parse_logs, parse_spans

TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"

OUR_LOG = {
    "time_unix_nano": 1_700_000_000_123_456_789,
    "severity_text": "WARNING",
    "severity_number": 13,
    "body": "upstream slow",
    "attributes": {"observatory.tenant": "acme", "n": 3},
    "trace_id": TRACE,
    "span_id": SPAN,
    "scope": "gateway",
    "resource": {"service.name": "gateway", "service.instance.id": "w1"},
}

# The collector's file exporter (pdata's JSON marshaler, contrib v0.133.0): 64-bit ints as strings,
# ids as hex, enums as ints, one request a line.
COLLECTOR_LOGS = {
    "resourceLogs": [
        {
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "idp"}}]},
            "scopeLogs": [
                {
                    "scope": {"name": "idp.app"},
                    "logRecords": [
                        {
                            "timeUnixNano": "1700000000000000001",
                            "observedTimeUnixNano": "1700000000000000009",
                            "severityNumber": 17,
                            "severityText": "ERROR",
                            "body": {"stringValue": "token rejected"},
                            "attributes": [
                                {"key": "observatory.tenant", "value": {"stringValue": "acme"}},
                                {"key": "attempt", "value": {"intValue": "2"}},
                                {"key": "ok", "value": {"boolValue": False}},
                                {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}]}}},
                            ],
                            "traceId": TRACE,
                            "spanId": SPAN,
                        },
                        {"observedTimeUnixNano": "1700000000000000002", "severityNumber": 9, "body": {}},
                    ],
                }
            ],
        }
    ]
}

COLLECTOR_SPANS = {
    "resourceSpans": [
        {
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "gateway"}}]},
            "scopeSpans": [
                {
                    "scope": {"name": "gpt_observatory.gateway"},
                    "spans": [
                        {
                            "traceId": TRACE,
                            "spanId": SPAN,
                            "parentSpanId": "",
                            "name": "POST /v1/chat/completions",
                            "kind": 2,
                            "startTimeUnixNano": "1700000000000000000",
                            "endTimeUnixNano": "1700000000500000000",
                            "attributes": [{"key": "http.response.status_code", "value": {"intValue": "502"}}],
                            "events": [{"timeUnixNano": "1700000000100000000", "name": "first_token"}],
                            "status": {"code": 2, "message": "upstream failed"},
                        },
                        {
                            "traceId": TRACE,
                            "spanId": "00f067aa0ba902b7",
                            "parentSpanId": SPAN,
                            "name": "upstream",
                            "kind": "SPAN_KIND_CLIENT",
                            "startTimeUnixNano": "1700000000010000000",
                            "endTimeUnixNano": "1700000000400000000",
                            "status": {"code": "STATUS_CODE_OK"},
                        },
                    ],
                }
            ],
        }
    ]
}


def _line(obj) -> bytes:
    return orjson.dumps(obj) + b"\n"


def test_our_log_line_becomes_one_entry():
    (entry,) = parse_logs(_line(OUR_LOG))
    assert entry.time_ns == OUR_LOG["time_unix_nano"]
    assert (entry.service, entry.level, entry.severity, entry.message) == ("gateway", "WARNING", 13, "upstream slow")
    assert (entry.trace_id, entry.span_id) == (TRACE, SPAN)
    assert entry.attributes == {"observatory.tenant": "acme", "n": 3}
    assert entry.resource["service.instance.id"] == "w1"


def test_missing_ids_and_severity_text_are_filled_sensibly():
    line = _line({**OUR_LOG, "severity_text": None, "severity_number": 17, "trace_id": "0" * 32, "span_id": None})
    (entry,) = parse_logs(line)
    assert entry.level == "ERROR" and entry.trace_id is None and entry.span_id is None


def test_a_collector_request_line_holds_many_records_with_plain_values():
    first, second = parse_logs(_line(COLLECTOR_LOGS))
    assert (first.service, first.level, first.message) == ("idp", "ERROR", "token rejected")
    assert first.time_ns == 1_700_000_000_000_000_001
    assert first.attributes == {"observatory.tenant": "acme", "attempt": 2, "ok": False, "tags": ["a"]}
    assert (first.trace_id, first.span_id) == (TRACE, SPAN)
    # No timeUnixNano: the observed time stands in; no severityText: the number names the level.
    assert second.time_ns == 1_700_000_000_000_000_002 and second.level == "INFO" and second.message == ""
    assert second.trace_id is None


def test_collector_spans_map_enums_given_as_ints_or_names():
    server, client = parse_spans(_line(COLLECTOR_SPANS))
    assert (server.kind, server.status, server.status_message) == ("SERVER", "ERROR", "upstream failed")
    assert server.parent_span_id is None and server.service == "gateway"
    assert server.scope == "gpt_observatory.gateway"
    assert server.attributes == {"http.response.status_code": 502}
    assert server.events == [{"name": "first_token", "time_unix_nano": 1_700_000_000_100_000_000, "attributes": {}}]
    assert (client.kind, client.status, client.parent_span_id) == ("CLIENT", "OK", SPAN)
    assert client.end_ns - client.start_ns == 390_000_000


def test_our_span_line():
    line = _line(
        {
            "trace_id": TRACE,
            "span_id": SPAN,
            "parent_span_id": None,
            "name": "auth",
            "kind": "INTERNAL",
            "start_time_unix_nano": 10,
            "end_time_unix_nano": 25,
            "status": {"code": "UNSET", "description": None},
            "attributes": {"k": "v"},
            "events": [],
            "links": [],
            "scope": "s",
            "resource": {"service.name": "gateway"},
        }
    )
    (span,) = parse_spans(line)
    assert (span.name, span.kind, span.status, span.start_ns, span.end_ns) == ("auth", "INTERNAL", "UNSET", 10, 25)
    assert span.service == "gateway" and span.scope == "s" and span.status_message is None


def test_blank_lines_and_the_other_signal_are_empty_not_errors():
    assert parse_logs(b"\n") == [] and parse_spans(b"  \n") == []
    assert parse_logs(_line(COLLECTOR_SPANS)) == []
    assert parse_spans(_line(COLLECTOR_LOGS)) == []


@pytest.mark.parametrize("garbage", [b"{not json", b"[1, 2]", b'{"unrelated": true}', b'{"time_unix_nano": 1'])
def test_garbage_raises_value_error(garbage):
    with pytest.raises(ValueError):
        parse_logs(garbage)
    with pytest.raises(ValueError):
        parse_spans(garbage)
