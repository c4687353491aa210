"""Following files like ``tail -F``: rotation by rename, truncation, new files, half-written lines."""

from __future__ import annotations

import gzip
import os

import orjson

from gpt_observatory.telemetry.reading.follow import Follower
from gpt_observatory.telemetry.reading.records import parse_logs
from tests.telemetry.reading.test_records import OUR_LOG


def _log(message: str, t: int = 1) -> bytes:
    return orjson.dumps({**OUR_LOG, "body": message, "time_unix_nano": t}) + b"\n"


def _append(path, *messages: str) -> None:
    with open(path, "ab") as fh:
        fh.write(b"".join(_log(m) for m in messages))


def _messages(follower) -> list[str]:
    return [e.message for e in follower.poll()]


def test_reads_what_is_there_then_only_what_is_appended(tmp_path):
    live = tmp_path / "logs.jsonl"
    _append(live, "a", "b")
    follower = Follower(tmp_path, "logs", parse_logs)
    assert _messages(follower) == ["a", "b"]
    assert _messages(follower) == []
    _append(live, "c")
    assert _messages(follower) == ["c"]


def test_from_the_end_skips_what_was_already_there(tmp_path):
    _append(tmp_path / "logs.jsonl", "old")
    follower = Follower(tmp_path, "logs", parse_logs, from_start=False)
    assert _messages(follower) == []
    _append(tmp_path / "logs.jsonl", "new")
    assert _messages(follower) == ["new"]


def test_rotation_by_rename_loses_and_repeats_nothing(tmp_path):
    live = tmp_path / "logs.jsonl"
    _append(live, "1")
    follower = Follower(tmp_path, "logs", parse_logs)
    assert _messages(follower) == ["1"]
    _append(live, "2")  # written just before the rotation, not yet read
    live.replace(tmp_path / "logs.jsonl.1")
    _append(live, "3")
    assert sorted(_messages(follower)) == ["2", "3"]
    (tmp_path / "logs.jsonl.1").replace(tmp_path / "logs.jsonl.2")
    live.replace(tmp_path / "logs.jsonl.1")
    _append(live, "4")
    assert _messages(follower) == ["4"]


def test_a_compressed_copy_of_a_followed_file_is_not_read_again(tmp_path):
    live = tmp_path / "logs.jsonl"
    _append(live, "1")
    follower = Follower(tmp_path, "logs", parse_logs)
    assert _messages(follower) == ["1"]
    (tmp_path / "logs.jsonl.1.gz").write_bytes(gzip.compress(live.read_bytes()))
    live.unlink()
    _append(live, "second")
    assert _messages(follower) == ["second"]


def test_truncation_starts_the_file_again(tmp_path):
    live = tmp_path / "logs.jsonl"
    _append(live, "a", "b", "c")
    follower = Follower(tmp_path, "logs", parse_logs)
    assert len(_messages(follower)) == 3
    with open(live, "wb") as fh:
        fh.write(_log("after truncate"))
    assert _messages(follower) == ["after truncate"]


def test_a_new_collector_file_appears_without_restarting(tmp_path):
    follower = Follower(tmp_path / "not-yet", "logs", parse_logs)
    assert _messages(follower) == []
    os.mkdir(tmp_path / "not-yet")
    _append(tmp_path / "not-yet" / "logs.jsonl", "hello")
    assert _messages(follower) == ["hello"]


def test_a_half_written_line_waits_for_its_end(tmp_path):
    live = tmp_path / "logs.jsonl"
    line = _log("whole")
    live.write_bytes(line[:20])
    follower = Follower(tmp_path, "logs", parse_logs)
    assert _messages(follower) == []
    with open(live, "ab") as fh:
        fh.write(line[20:])
    assert _messages(follower) == ["whole"]
    assert follower.stats.bad_lines == 0


def test_deleted_files_are_forgotten(tmp_path):
    for name in ("logs.jsonl", "logs.jsonl.1", "logs.jsonl.2"):
        _append(tmp_path / name, name)
    follower = Follower(tmp_path, "logs", parse_logs)
    assert len(_messages(follower)) == 3 and follower.tracked_files == 3
    (tmp_path / "logs.jsonl.2").unlink()
    (tmp_path / "logs.jsonl.1").unlink()
    for _ in range(10):
        _messages(follower)
    assert follower.tracked_files == 1
