"""``observatory serve --workers N`` as real processes: N workers answer on one port, an RPM limit
holds exactly across them (Redis and the in-host store), one scrape of the admin listener's
``/metrics`` has every worker's series, and SIGTERM to the supervisor drains every worker."""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.semconv.attributes.service_attributes import SERVICE_INSTANCE_ID
from prometheus_client.parser import text_string_to_metric_families

from gpt_observatory.telemetry import names
from tests import components

pytestmark = pytest.mark.timeout(180)


@dataclass
class Gateway:
    url: str
    admin: str
    proc: Any
    log: Path
    state: Path

    def samples(self, family: str) -> list[Any]:
        """The samples of ``family`` in one scrape of the admin listener's /metrics."""
        text = httpx.get(self.admin + "/metrics", timeout=10).text
        return [s for f in text_string_to_metric_families(text) if f.name == family for s in f.samples]

    def by_worker(self, family: str, **labels: str) -> Counter[str]:
        counts: Counter[str] = Counter()
        for s in self.samples(family):
            if all(s.labels.get(k) == v for k, v in labels.items()):
                counts[s.labels[names.WORKER]] += s.value
        return counts

    def workers(self) -> set[str]:
        return {s.labels[names.WORKER] for s in self.samples("target_info")}

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@contextmanager
def gateway(tmp_path: Path, upstream: str, *args: str, workers: int = 2,
            env: dict[str, str] | None = None) -> Iterator[Gateway]:
    port, admin = components.free_port(), components.free_port()
    state, log = tmp_path / "state", tmp_path / "gateway.log"
    cmd = [components.require_binary("observatory"), "serve", "--workers", str(workers), "--backend", "upstream",
           "--upstream-url", upstream, "--upstream-models", "delay-1", "--allow-anonymous",
           "--port", str(port), "--admin-port", str(admin), "--graceful-timeout-s", "20", *args]
    proc = components.start_process(cmd, log, env={"OBSERVATORY_STATE_DIR": str(state),
                                                   "OBSERVATORY_GPU_ENABLED": "false", **(env or {})},
                                  cwd=tmp_path)
    gw = Gateway(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", proc, log, state)

    def all_serving() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the supervisor exited ({proc.returncode}):\n{gw.tail()}")
        try:
            return len(gw.workers()) == workers
        except httpx.HTTPError:
            return False

    try:
        components.wait_for(all_serving, timeout=90, interval=0.3, what=f"{workers} workers serving")
        yield gw
    finally:
        components.stop_process(proc, timeout=60)


def chat(url: str, model: str = "tiny-gpt") -> tuple[int, str]:
    """One chat completion on a fresh connection; its status and the trace id it carried."""
    trace_id = secrets.token_hex(16)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with httpx.Client(timeout=60) as client:
        r = client.post(url + "/v1/chat/completions", json=body,
                        headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    return r.status_code, trace_id


def instances_by_trace(traces: Path) -> dict[str, str]:
    """service.instance.id of the SERVER span of each trace in the jsonl traces file."""
    lines = [line for f in [*traces.parent.glob(traces.name + ".*"), traces] if f.is_file()
             for line in f.read_text().splitlines() if line.strip()]
    spans = [json.loads(line) for line in lines]
    return {s["trace_id"]: s["resource"][SERVICE_INSTANCE_ID] for s in spans if s["kind"] == "SERVER"}


def test_two_workers_answer_on_one_port_and_one_scrape_has_both(tmp_path, upstream_peer):
    with gateway(tmp_path, upstream_peer.url) as gw, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: chat(gw.url), range(60)))
        assert [status for status, _ in answers] == [200] * 60
        served = components.wait_for(
            lambda: (c := gw.by_worker("observatory_gateway_requests", http_response_status_code="200"))
            and sum(c.values()) == 60 and c, timeout=10, what="every request counted")
        traces = gw.state / "telemetry" / "traces.jsonl"
        instances = components.wait_for(
            lambda: (found := instances_by_trace(traces)) and all(t in found for _, t in answers) and found,
            timeout=20, what="a server span for every request")

    # Both workers answered requests on the one port, and the one scrape counted each worker's.
    assert set(served) == {"0", "1"} and min(served.values()) > 0, served
    assert len({instances[t] for _, t in answers}) == 2
    assert {instances[t].rsplit("-", 1)[1] for _, t in answers} == {"0", "1"}


@pytest.mark.parametrize("store", ["host", "redis"])
def test_an_rpm_limit_admits_exactly_the_limit_across_workers(tmp_path, upstream_peer, store, request):
    limit, sent = 20, 70
    args = ["--requests-per-minute", str(limit), "--rate-limit-namespace", f"w-{uuid.uuid4().hex}"]
    if store == "redis":
        args += ["--redis-url", request.getfixturevalue("redis_url")]
    # The store's 50 ms default timeout fails open (by design, and counted) when a loaded 2-core CI box
    # stalls a call; this test is about exactness across workers, so it gives the store time to answer.
    slow_box = {"OBSERVATORY_SERVE_REDIS_TIMEOUT_S": "5"}
    with gateway(tmp_path, upstream_peer.url, *args, env=slow_box) as gw, ThreadPoolExecutor(16) as pool:
        statuses = Counter(status for status, _ in pool.map(lambda _: chat(gw.url), range(sent)))
        seen = components.wait_for(
            lambda: (c := gw.by_worker("observatory_gateway_requests")) and sum(c.values()) == sent and c,
            timeout=10, what="every request counted")
        fail_open = sum(gw.by_worker("observatory_gateway_rate_limit_fail_open").values())

    assert fail_open == 0, f"the store failed open {fail_open} times"
    assert statuses == {200: limit, 429: sent - limit}
    assert set(seen) == {"0", "1"} and min(seen.values()) > 0, seen  # both workers took requests


def _children(pid: int) -> set[int]:
    """The worker processes of supervisor ``pid`` (the spawned ones, not multiprocessing's resource tracker)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_the_supervisor_drains_every_worker(tmp_path, upstream_peer):
    in_flight = 8
    with gateway(tmp_path, upstream_peer.url) as gw, ThreadPoolExecutor(in_flight) as pool:
        workers = _children(gw.proc.pid)
        assert len(workers) == 2
        # delay-1: the upstream answers after 1 s, so every one of these is in flight at the signal.
        pending = [pool.submit(chat, gw.url, "delay-1") for _ in range(in_flight)]
        components.wait_for(
            lambda: sum(s.value for s in gw.samples("http_server_active_requests")) >= in_flight,
            timeout=10, interval=0.02, what="every request in flight")
        per_worker = gw.by_worker("http_server_active_requests")
        gw.proc.send_signal(signal.SIGTERM)  # the supervisor only, as an orchestrator does
        code = gw.proc.wait(60)
        finished = [f.result()[0] for f in pending]

    assert code == 0, gw.tail()
    assert "Traceback" not in gw.tail()
    assert set(per_worker) == {"0", "1"} and min(per_worker.values()) > 0, per_worker  # both were draining
    assert finished == [200] * in_flight
    assert not any(_alive(pid) for pid in workers)


def test_sighup_to_the_supervisor_is_passed_on_and_stops_nothing(tmp_path, upstream_peer):
    with gateway(tmp_path, upstream_peer.url) as gw:
        workers = _children(gw.proc.pid)
        gw.proc.send_signal(signal.SIGHUP)  # no catalog here: the workers ignore it
        time.sleep(1)  # the supervisor has passed it on (it looks every 0.1 s)
        with ThreadPoolExecutor(4) as pool:
            statuses = [status for status, _ in pool.map(lambda _: chat(gw.url), range(20))]
        assert gw.proc.poll() is None, gw.tail()
        assert _children(gw.proc.pid) == workers and len(workers) == 2
    assert statuses == [200] * 20


def test_a_worker_that_dies_is_replaced_under_its_index(tmp_path, upstream_peer):
    with gateway(tmp_path, upstream_peer.url) as gw:
        before = _children(gw.proc.pid)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        components.wait_for(lambda: len(now := _children(gw.proc.pid)) == 2 and victim not in now, timeout=30,
                            what="a replacement worker")
        components.wait_for(lambda: gw.workers() == {"0", "1"}, timeout=60, interval=0.3,
                            what="the replacement serving its index's metrics")
        with ThreadPoolExecutor(4) as pool:
            statuses = [status for status, _ in pool.map(lambda _: chat(gw.url), range(20))]
        assert gw.proc.poll() is None
    assert statuses == [200] * 20
    assert "exited (-9); starting another" in gw.tail()


def test_workers_that_cannot_start_stop_the_supervisor_with_their_error(tmp_path, upstream_peer):
    # environment=production refuses anonymous access and the default salt: each worker exits 2 at start.
    port = components.free_port()
    cmd = [components.require_binary("observatory"), "serve", "--workers", "2", "--backend", "upstream",
           "--upstream-url", upstream_peer.url, "--allow-anonymous", "--port", str(port)]
    proc = components.start_process(cmd, tmp_path / "gateway.log", env={"OBSERVATORY_ENVIRONMENT": "production"},
                                    cwd=tmp_path)
    try:
        code = proc.wait(90)
    finally:
        components.stop_process(proc)
    log = (tmp_path / "gateway.log").read_text()
    assert code == 2, log
    assert "environment=production refuses to start" in log and "before it started serving" in log
    assert not _children(proc.pid)
