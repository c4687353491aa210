"""The embedded default: JSON-lines files, one item per line, logs correlated with traces."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys

from loguru import logger
from opentelemetry import metrics, trace

from gpt_observatory import telemetry
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.backends import _files
from gpt_observatory.telemetry.backends.jsonl import RotatingFile


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_signal_lands_in_its_file_one_item_per_line(tmp_path):
    handle = telemetry.configure("jsonl-svc")
    assert handle.backends == {"traces": ["jsonl"], "metrics": ["jsonl"], "logs": ["jsonl"]}
    tracer = trace.get_tracer("test")
    counter = metrics.get_meter("test").create_counter(names.GATEWAY_REQUESTS.name)
    with tracer.start_as_current_span("parent") as parent:
        with tracer.start_as_current_span("child"):
            logger.info("inside child")
            counter.add(3, {names.TENANT: "acme"})
        logging.getLogger("some.library").warning("stdlib inside parent")
    handle.shutdown()

    folder = tmp_path / "state" / "telemetry"
    spans = _read(folder / "traces.jsonl")
    assert [s["name"] for s in spans] == ["child", "parent"]
    child, par = spans
    trace_id = format(parent.get_span_context().trace_id, "032x")
    assert child["trace_id"] == par["trace_id"] == trace_id
    assert child["parent_span_id"] == par["span_id"]

    logs = _read(folder / "logs.jsonl")
    by_body = {r["body"]: r for r in logs}
    assert by_body["inside child"]["trace_id"] == trace_id
    assert by_body["inside child"]["span_id"] == child["span_id"]
    assert by_body["stdlib inside parent"]["span_id"] == par["span_id"]
    assert by_body["stdlib inside parent"]["attributes"]["logger.name"] == "some.library"

    points = [p for p in _read(folder / "metrics.jsonl") if p["name"] == names.GATEWAY_REQUESTS.name]
    assert points[-1]["value"] == 3 and points[-1]["attributes"] == {names.TENANT: "acme"}


def test_files_rotate_by_size(tmp_path):
    handle = telemetry.configure("rot", jsonl_max_bytes=4000, jsonl_backups=2, metrics_exporter=["none"])
    tracer = trace.get_tracer("test")
    for i in range(60):
        with tracer.start_as_current_span(f"span-{i}"):
            pass
        handle.force_flush()
    handle.shutdown()
    folder = tmp_path / "state" / "telemetry"
    current, first, second = (folder / "traces.jsonl", folder / "traces.jsonl.1", folder / "traces.jsonl.2")
    assert first.exists() and second.exists() and not (folder / "traces.jsonl.3").exists()
    for f in (current, first, second):
        assert f.stat().st_size <= 4000
        for line in f.read_text().splitlines():
            json.loads(line)
    names_seen = [s["name"] for f in (second, first, current) for s in _read(f)]
    assert names_seen[-1] == "span-59"


def test_json_console_format(capfd):
    telemetry.configure("console-json", console_format="json", traces_exporter=["none"], metrics_exporter=["none"])
    logger.info("structured")
    err = capfd.readouterr().err
    record = json.loads(err.strip().splitlines()[-1])
    assert record["record"]["message"] == "structured"


_WRITER = """
import sys
from pathlib import Path
from gpt_observatory.telemetry.backends.jsonl import RotatingFile
path, who, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
out = RotatingFile(path, max_bytes=2000, backups=10_000)
for i in range(n):
    out.write_lines([f'{{"who": "{who}", "i": {i}, "pad": "{"x" * 40}"}}\\n'.encode()])
out.close()
"""


def test_processes_sharing_a_file_rotate_it_without_losing_a_line(tmp_path):
    path = tmp_path / "logs.jsonl"
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), who, "1500"]) for who in ("a", "b", "c")]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]

    files = [path, *path.parent.glob("logs.jsonl.*[0-9]")]
    assert len(files) > 50  # it rotated many times, under three writers
    seen = sorted((r["who"], r["i"]) for f in files for r in _read(f))
    assert seen == sorted((who, i) for who in "abc" for i in range(1500))


class FullDisk:
    """Wraps ``os.write`` for one file: while ``full``, a write puts down half its bytes and then
    fails with ENOSPC (the worst a failing disk can leave); ``short`` returns a short count instead."""

    def __init__(self, path, monkeypatch):
        self.path, self.full, self.short = path, False, False
        real = os.write

        def write(fd, data):
            if not (self.full or self.short) or not self._is_target(fd):
                return real(fd, data)
            half = real(fd, bytes(data)[: len(data) // 2])
            if self.short:
                return half
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "write", write)

    def _is_target(self, fd):
        try:
            mine, target = os.fstat(fd), os.stat(self.path)
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (target.st_dev, target.st_ino)


def _spans(handle, *span_names):
    tracer = trace.get_tracer("disk")
    for name in span_names:
        with tracer.start_as_current_span(name):
            pass
    handle.force_flush()


def test_a_full_disk_leaves_no_torn_line_counts_the_drops_and_says_so_once_a_minute(tmp_path, monkeypatch):
    handle = telemetry.configure("full-disk", traces_exporter=["jsonl"], metrics_exporter=["memory"],
                                 logs_exporter=["memory"])
    path = tmp_path / "state" / "telemetry" / "traces.jsonl"
    _spans(handle, "before")
    disk = FullDisk(path, monkeypatch)

    disk.full = True
    _spans(handle, "lost-1", "lost-2", "lost-3")  # one export of three
    _spans(handle, "lost-4")  # within the minute: counted, not logged again
    disk.full = False
    _spans(handle, "after")

    # Every line is one whole record, and the ones written after the disk recovered are there.
    assert [s["name"] for s in _read(path)] == ["before", "after"]
    dropped = {(p.attributes[names.TELEMETRY_SIGNAL], p.attributes[names.TELEMETRY_BACKEND],
                p.attributes[names.TELEMETRY_DROP_REASON]): p.value
               for p in handle.memory.metrics()[names.TELEMETRY_DROPPED.name]}
    assert dropped[("traces", "jsonl", "write_failed")] == 4
    assert handle.stats.failures("traces") == 4
    warnings = [r.log_record.body for r in handle.memory.logs() if "dropped" in str(r.log_record.body)]
    assert len(warnings) == 1, warnings
    assert "dropped 3 records" in warnings[0] and str(path) in warnings[0] and "No space left" in warnings[0]

    # A minute later (made shorter here), the next write says how many more were dropped meanwhile.
    monkeypatch.setattr(_files, "REPORT_EVERY_S", 0.0)
    _spans(handle, "after-2")
    warnings = [r.log_record.body for r in handle.memory.logs() if "dropped" in str(r.log_record.body)]
    assert len(warnings) == 2 and "1 more records were dropped" in warnings[1], warnings


def test_a_short_write_is_cut_back_and_the_lines_that_still_fit_are_kept(tmp_path, monkeypatch):
    path = tmp_path / "logs.jsonl"
    out = RotatingFile(path, max_bytes=1 << 20, backups=1)
    out.write_lines([b'{"i": 0}\n'])
    disk = FullDisk(path, monkeypatch)
    disk.short = True
    assert out.write_lines([b'{"i": 1}\n', b'{"i": 2}\n']) == 2  # the batch, then each line: all short
    assert path.read_bytes() == b'{"i": 0}\n'
    disk.short = False
    assert out.write_lines([b'{"i": 3}\n']) == 0
    out.close()
    assert [r["i"] for r in _read(path)] == [0, 3]
