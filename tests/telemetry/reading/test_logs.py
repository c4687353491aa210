"""``observatory logs`` end to end: two real writer processes, one follower, rotation mid-way."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from gpt_observatory.telemetry import names

WRITER = textwrap.dedent(
    """
    import sys, time
    from loguru import logger
    from gpt_observatory import telemetry

    name, count, max_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    handle = telemetry.configure(
        name, jsonl_max_bytes=max_bytes, jsonl_backups=200, traces_exporter=["none"], metrics_exporter=["none"]
    )
    for i in range(count):
        tenant = "tenant-x" if i % 3 != 2 else "tenant-y"
        logger.bind(**{TENANT: tenant, "writer": name, "seq": i}).info("{} record {}", name, i)
        if i % 4 == 0:
            handle.force_flush()
            time.sleep(0.005)
    handle.shutdown()
    """
).replace("TENANT", repr(names.TENANT))


def _observatory() -> str:
    beside = Path(sys.executable).with_name("observatory")
    return str(beside) if beside.exists() else shutil.which("observatory") or "observatory"


def _default_sigint() -> None:
    """In the child before exec: SIGINT delivered and not ignored, as from a shell. A child inherits an
    ignored or blocked SIGINT, and in the full suite this process had one (the follower then never
    saw the Ctrl-C this test sends); the follower's own handling is what is under test."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_follow_sees_every_record_of_a_tenant_once_in_order_across_rotation(tmp_path):
    state = tmp_path / "state"
    env = {**os.environ, "OBSERVATORY_STATE_DIR": str(state), "NO_COLOR": "1"}
    follower = subprocess.Popen(
        [_observatory(), "logs", "-f", "--tenant", "tenant-x", "--json", "-n", "100000"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "follower.stderr").open("wb"),  # a file: an unread pipe could fill and stall it
        preexec_fn=_default_sigint,
    )
    out: list[dict] = []
    reader = threading.Thread(target=lambda: out.extend(json.loads(line) for line in follower.stdout), daemon=True)
    reader.start()
    count = 240
    try:
        # Both writers rotate the shared file (small files): each may keep appending for a moment to
        # the file the other just renamed (.1, .2, ...), which the follower must track by inode.
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, name, str(count), str(max_bytes)], env=env, stderr=subprocess.DEVNULL
            )
            for name, max_bytes in (("writer-a", 6000), ("writer-b", 6000))
        ]
        for w in writers:
            assert w.wait(timeout=120) == 0
        expected = {(w, i) for w in ("writer-a", "writer-b") for i in range(count) if i % 3 != 2}
        deadline = time.monotonic() + 30
        while len(out) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # room for a duplicate to show up, if the follower produced one
    finally:
        follower.send_signal(signal.SIGINT)
        try:
            follower.wait(timeout=30)  # a busy 2-core box: a clean exit on SIGINT, not a fast one
        except subprocess.TimeoutExpired:
            follower.kill()
            follower.wait()
        reader.join(timeout=10)

    rotated = list((state / "telemetry").glob("logs.jsonl.*"))
    assert len(rotated) >= 5, "the writers were meant to rotate the file several times"
    seen = [(r["attributes"]["writer"], r["attributes"]["seq"]) for r in out]
    assert all(r["attributes"][names.TENANT] == "tenant-x" for r in out)
    assert len(seen) == len(set(seen)), "a record was printed twice"
    assert set(seen) == expected
    for writer in ("writer-a", "writer-b"):
        mine = [seq for w, seq in seen if w == writer]
        assert mine == sorted(mine), f"{writer}'s records came out of order"
    assert follower.returncode in (0, -signal.SIGINT), (
        f"SIGINT here: {signal.getsignal(signal.SIGINT)}, blocked: {signal.pthread_sigmask(signal.SIG_BLOCK, [])}")


# -- filtering, ordering and formatting -------------------------------------------------------------


def _entry(message="m", t=1, **kw):
    from gpt_observatory.telemetry.reading import LogEntry

    base = dict(time_ns=t, service="gateway", level="INFO", severity=9, message=message, trace_id=None,
                span_id=None, attributes={}, resource={})  # fmt: skip
    return LogEntry(**{**base, **kw})


def test_durations_and_timestamps():
    from gpt_observatory.telemetry.reading.when import parse_when

    now = 10**19
    assert parse_when("10m", now) == now - 600 * 10**9
    assert parse_when("1.5h", now) == now - 5400 * 10**9
    assert parse_when("2026-01-31T14:05:00Z", now) == parse_when("2026-01-31T14:05:00", now)
    assert parse_when("2026-01-31T15:05:00+01:00", now) == parse_when("2026-01-31T14:05:00", now)
    with pytest.raises(ValueError, match="duration"):
        parse_when("yesterday", now)


def test_a_query_checks_every_condition_given():
    import re

    from gpt_observatory.telemetry.reading.logs import LogQuery

    e = _entry(
        "upstream timed out",
        t=50,
        level="WARNING",
        severity=13,
        trace_id="ab" * 16,
        attributes={names.TENANT: "acme", names.GEN_AI_RESPONSE_MODEL: "gpt-small"},
    )
    assert LogQuery().matches(e)
    assert LogQuery(since_ns=50, until_ns=50, min_severity=13, services=frozenset({"gateway"})).matches(e)
    assert LogQuery(tenant="acme", model="gpt-small", trace_prefix="abab", grep=re.compile("timed")).matches(e)
    for miss in (
        LogQuery(since_ns=51),
        LogQuery(until_ns=49),
        LogQuery(min_severity=17),
        LogQuery(services=frozenset({"idp"})),
        LogQuery(tenant="other"),
        LogQuery(model="gpt-large"),
        LogQuery(trace_prefix="cd"),
        LogQuery(grep=re.compile("^ok")),
    ):
        assert not miss.matches(e), miss


def test_streams_merge_by_time_even_when_each_is_a_little_out_of_order():
    from gpt_observatory.telemetry.reading.logs import merged

    a = [_entry(t=t) for t in (1, 4, 3, 8)]
    b = [_entry(t=t) for t in (2, 7, 5, 6)]
    assert [e.time_ns for e in merged([a, b], window=2)] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_a_line_shows_short_trace_id_and_chosen_attributes_and_escapes_control_characters():
    from gpt_observatory.telemetry.reading.logs import LineFormat, json_line

    e = _entry("line one\nline two \x1b[31m", trace_id="0123456789abcdef" * 2, attributes={"a": 1, "b": "x"})
    line = LineFormat(fields=("b", "missing"), today="").plain(e)
    assert "01234567 " in line and "b=x" in line and "a=1" not in line
    assert "\n" not in line and "\x1b" not in line and "line one\\nline two \\x1b[31m" in line
    record = json.loads(json_line(e, ["a"]))
    assert record["attributes"] == {"a": 1} and record["message"] == e.message
    assert record["time"] == "1970-01-01T00:00:00.000000001Z"
