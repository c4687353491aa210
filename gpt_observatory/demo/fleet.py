"""The demo's fleet: a second catalog model served by a pool of two local replicas, one of which is
killed mid-load and started again.

The replicas are the project's fixed OpenAI-compatible server (:mod:`gpt_observatory.demo.upstream`)
as subprocesses, answering after ``REPLICA_DELAY_MS`` (a replica's generation time). The gateway's
catalog (:func:`catalog_toml`) serves them as ``FLEET_MODEL`` beside the in-process champion. While
closed-loop traffic runs, ``replica-2`` gets SIGKILL; the pool retries what it held on the other
replica (nothing had reached the caller), ejects it, and readmits it once it is back and its probes
pass. :class:`FleetReport` is what the caller saw and what the gateway's ``/readyz`` said, with times.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gpt_observatory.demo.billing import FLEET_TENANT
from gpt_observatory.demo.stack import FLEET_MODEL, MODEL, SCOPE, Gateway, free_port

REPLICA_DELAY_MS = 40.0
KILLED = "replica-2"
# Fast reactions for a short demo: a replica out after 3 failed attempts in a row (passive ejection,
# which under load comes well before the probes' verdict: one a second, 3 failures in a row), back
# after one passing probe. Production defaults are slower (README "Replica pools").
POOL_POLICY = {"probe_interval_s": 1.0, "probe_timeout_s": 0.5, "healthy_threshold": 1, "unhealthy_threshold": 3,
               "consecutive_errors": 3, "base_ejection_s": 5.0}


class Replica:
    """One replica process on a loopback port that it keeps across a kill and a restart."""

    def __init__(self, name: str, folder: Path, delay_ms: float = REPLICA_DELAY_MS, port: int | None = None) -> None:
        self.name, self.port, self.delay_ms = name, port or free_port(), delay_ms
        self.log = folder / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> Replica:
        cmd = [sys.executable, "-m", "gpt_observatory.demo.upstream", "--port", str(self.port),
               "--delay-ms", str(self.delay_ms)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/models", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"replica {self.name} did not start on port {self.port} (log {self.log})")

    def kill(self) -> None:
        """SIGKILL: no goodbye, the connections it holds die with it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def seen(self) -> int:
        """Completions this process answered (since its last start)."""
        try:
            return len(httpx.get(f"http://127.0.0.1:{self.port}/_seen", timeout=2).json())
        except (httpx.HTTPError, ValueError):
            return 0


def start_replicas(folder: Path) -> list[Replica]:
    return [Replica(f"replica-{i}", folder).start() for i in (1, 2)]


def catalog_toml(replicas: list[Replica], shadow_share: float | None) -> str:
    """The demo's two-model catalog: the in-process champion (shadowed while a challenger is judged)
    and the replica pool."""
    shadow = f"shadow_share = {shadow_share}\n" if shadow_share else ""
    pool = "\n".join(f"{k} = {v}" for k, v in POOL_POLICY.items())
    listed = ", ".join(f'{{ url = "{r.url}", name = "{r.name}" }}' for r in replicas)
    return (f'[[models]]\nname = "{MODEL}"\nkind = "mlflow"\n{shadow}\n'
            f'[[models]]\nname = "{FLEET_MODEL}"\nkind = "upstream"\nfallbacks = ["{MODEL}"]\n'
            f"replicas = [{listed}]\n[models.pool]\n{pool}\n")


@dataclass
class FleetReport:
    """What callers of the pool model saw, and when the gateway said what about the killed replica."""

    statuses: Counter[int] = field(default_factory=Counter)
    failed_unstarted: int = 0  # failed with no byte received: what the pool must never let through
    failed_started: int = 0  # cut after bytes had arrived (a stream on the killed replica)
    killed: str = KILLED
    ejected_after_s: float | None = None  # from the kill to /readyz saying so
    readmitted_after_s: float | None = None  # from the restart to /readyz saying healthy
    answered_after_restart: int = 0  # completions the restarted replica answered (it keeps the last 10)
    states: list[str] = field(default_factory=list)  # the killed replica's states as seen, from before the kill

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["statuses"] = {str(k): v for k, v in sorted(self.statuses.items())}
        d["requests"] = sum(self.statuses.values())
        return d


class _Traffic:
    """Closed-loop chat completions to the pool model (every other one streamed) from ``workers``
    threads as the demo's internal-tier tenant (a rate limit it never reaches); each answer's usage
    goes to ``spend`` when given."""

    def __init__(self, base_url: str, idp: Any, report: FleetReport, workers: int = 4, spend: Any = None) -> None:
        self.base_url, self.idp, self.report, self.spend = base_url, idp, report, spend
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"demo-fleet-{i}", daemon=True)
                         for i in range(workers)]

    def __enter__(self) -> _Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, worker: int) -> None:
        n = 0
        token = self.idp.mint(f"{FLEET_TENANT}-{worker}", tenant=FLEET_TENANT, scopes=[SCOPE])
        headers = {"authorization": f"Bearer {token}"}
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            while not self._stop.is_set():
                status, started, usage = self._ask(client, headers, stream=n % 2 == 1)
                with self._lock:
                    self.report.statuses[status] += 1
                    if status != 200:
                        if started:
                            self.report.failed_started += 1
                        else:
                            self.report.failed_unstarted += 1
                if self.spend is not None:
                    self.spend.note(FLEET_TENANT, FLEET_MODEL, status, usage)
                n += 1

    def _ask(self, client: httpx.Client, headers: dict[str, str], stream: bool) -> tuple[int, bool, Any]:
        """(status, whether any byte of the answer arrived, its usage); a stream cut midway is status 0."""
        body: dict[str, Any] = {"model": FLEET_MODEL, "messages": [{"role": "user", "content": "ping"}],
                                "max_tokens": 8, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        started, answer = False, b""
        try:
            with client.stream("POST", "/chat/completions", json=body, headers=headers) as r:
                for chunk in r.iter_bytes():
                    started = started or bool(chunk)
                    answer += chunk
                if r.status_code == 200 and stream and b"[DONE]" not in answer[-32:]:
                    return 0, started, None
                return r.status_code, started, _usage(answer, stream) if r.status_code == 200 else None
        except httpx.HTTPError:
            return 0, started, None


def _usage(answer: bytes, stream: bool) -> Any:
    """The ``usage`` of a completion body, or of a stream's last chunk that has one."""
    with contextlib.suppress(ValueError, AttributeError):
        if not stream:
            return json.loads(answer).get("usage")
        for line in reversed(answer.splitlines()):
            if line.startswith(b"data: {"):
                usage = json.loads(line[6:]).get("usage")
                if usage:
                    return usage
    return None


def _state(gateway: Gateway, name: str) -> str | None:
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        return gateway.readyz()["models"][FLEET_MODEL]["model"]["replicas"][name]["state"]
    return None


def _wait_state(gateway: Gateway, report: FleetReport, want: set[str], timeout: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        state = _state(gateway, report.killed)
        if state is not None and (not report.states or report.states[-1] != state):
            report.states.append(state)
        if state in want:
            return round(time.monotonic() - start, 2)
        time.sleep(0.05)
    return None


def run(gateway: Gateway, idp: Any, replicas: list[Replica], warm_s: float = 1.5, spend: Any = None) -> FleetReport:
    """Load the pool, kill ``KILLED``, wait for its ejection, restart it, wait for its readmission
    (each answer's usage noted in ``spend``, a :class:`gpt_observatory.demo.billing.Spend`, when given)."""
    report = FleetReport()
    killed = next(r for r in replicas if r.name == report.killed)
    with _Traffic(gateway.v1, idp, report, spend=spend):
        time.sleep(warm_s)
        report.states.append(_state(gateway, report.killed) or "unknown")
        killed.kill()
        report.ejected_after_s = _wait_state(gateway, report, {"ejected", "unhealthy"}, timeout=15)
        time.sleep(warm_s)
        killed.start()
        report.readmitted_after_s = _wait_state(gateway, report, {"healthy"}, timeout=15)
        time.sleep(warm_s)  # the readmitted replica takes its share again
    report.answered_after_restart = killed.seen()
    return report
