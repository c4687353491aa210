"""Finding a signal's files, oldest first, and reading them through rotation, gzip and bad lines."""

from __future__ import annotations

import gzip
import os

import orjson
from loguru import logger

from gpt_observatory import telemetry
from gpt_observatory.telemetry.reading import ReadStats, read_logs, read_spans, signal_files
from tests.telemetry.reading.test_records import COLLECTOR_LOGS, COLLECTOR_SPANS, OUR_LOG


def _log(message: str, t: int) -> bytes:
    return orjson.dumps({**OUR_LOG, "body": message, "time_unix_nano": t}) + b"\n"


def _collector_log(message: str, t: int) -> bytes:
    req = orjson.loads(orjson.dumps(COLLECTOR_LOGS))
    rec = req["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    rec["body"], rec["timeUnixNano"] = {"stringValue": message}, str(t)
    req["resourceLogs"][0]["scopeLogs"][0]["logRecords"] = [rec]
    return orjson.dumps(req) + b"\n"


def test_our_backups_come_oldest_first_and_other_signals_stay_out(tmp_path):
    for name, msg in [("logs.jsonl", "c"), ("logs.jsonl.1", "b"), ("logs.jsonl.2", "a"), ("logs.jsonl.10", "0")]:
        (tmp_path / name).write_bytes(_log(msg, 1))
    (tmp_path / "traces.jsonl").write_bytes(b"{}\n")
    (tmp_path / "metrics.jsonl").write_bytes(b"{}\n")
    names = [p.name for p in signal_files(tmp_path, "logs")]
    assert names == ["logs.jsonl.10", "logs.jsonl.2", "logs.jsonl.1", "logs.jsonl"]
    assert [e.message for e in read_logs(tmp_path)] == ["0", "a", "b", "c"]
    assert [p.name for p in signal_files(tmp_path, "traces")] == ["traces.jsonl"]


def test_what_the_real_backend_rotated_reads_back_complete_and_in_order(tmp_path):
    handle = telemetry.configure(
        "reader", jsonl_max_bytes=3000, jsonl_backups=50, traces_exporter=["none"], metrics_exporter=["none"]
    )
    for i in range(120):
        logger.bind(seq=i).info("line {}", i)
        handle.force_flush()
    handle.shutdown()
    folder = tmp_path / "state" / "telemetry"
    assert len(signal_files(folder, "logs")) > 3
    stats = ReadStats()
    entries = [e for e in read_logs(folder, stats) if "seq" in e.attributes]
    assert [e.attributes["seq"] for e in entries] == list(range(120))
    assert stats.bad_lines == 0 and {e.service for e in entries} == {"reader"}


def test_collector_file_with_lumberjack_backups_and_gzip(tmp_path):
    (tmp_path / "logs-2024-01-01T00-00-00.000.json.gz").write_bytes(gzip.compress(_collector_log("first", 1)))
    (tmp_path / "logs-2024-01-02T00-00-00.000.json").write_bytes(_collector_log("second", 2))
    (tmp_path / "logs.json").write_bytes(_collector_log("third", 3))
    (tmp_path / "traces.json").write_bytes(orjson.dumps(COLLECTOR_SPANS) + b"\n")
    expected = ["logs-2024-01-01T00-00-00.000.json.gz", "logs-2024-01-02T00-00-00.000.json", "logs.json"]
    assert [p.name for p in signal_files(tmp_path / "logs.json", "logs")] == expected
    assert [p.name for p in signal_files(tmp_path, "logs")] == expected
    assert [e.message for e in read_logs(tmp_path)] == ["first", "second", "third"]
    assert [s.name for s in read_spans(tmp_path)] == ["POST /v1/chat/completions", "upstream"]


def test_one_collector_file_shared_by_both_pipelines(tmp_path):
    shared = tmp_path / "otel.json"
    shared.write_bytes(orjson.dumps(COLLECTOR_SPANS) + b"\n" + _collector_log("hello", 5))
    assert signal_files(tmp_path, "logs") == [shared] and signal_files(tmp_path, "traces") == [shared]
    assert [e.message for e in read_logs(shared)] == ["hello"]
    assert len(list(read_spans(shared))) == 2


def test_gzip_is_recognised_by_its_magic_bytes_too(tmp_path):
    (tmp_path / "logs.jsonl.1").write_bytes(gzip.compress(_log("zipped", 1)))
    (tmp_path / "logs.jsonl").write_bytes(_log("plain", 2))
    assert [e.message for e in read_logs(tmp_path)] == ["zipped", "plain"]


def test_bad_lines_are_skipped_and_counted(tmp_path):
    (tmp_path / "logs.jsonl").write_bytes(
        _log("ok-1", 1) + b"{torn li\n" + b"\n" + b'{"x": 1}\n' + _log("ok-2", 2) + b'{"time_unix_nano": 3, "bo'
    )
    (tmp_path / "logs.jsonl.1").write_bytes(gzip.compress(_log("old", 0))[:-8])  # truncated gzip
    stats = ReadStats()
    assert [e.message for e in read_logs(tmp_path, stats)] == ["old", "ok-1", "ok-2"]
    assert stats.bad_lines == 4 and stats.files == 2


def test_missing_source_has_no_files(tmp_path):
    assert signal_files(tmp_path / "nope", "logs") == []
    assert list(read_logs(tmp_path / "nope")) == []
    os.mkdir(tmp_path / "empty")
    assert signal_files(tmp_path / "empty", "traces") == []
