"""Replicas as real processes: the test upstream (``upstream_peer.py``) in a subprocess each, on a
port of its own that it keeps across a kill and a restart, optionally answering after a delay.

Each is ``python -m gpt_observatory.demo.upstream --port P [--delay-ms D]`` (the pool tests and
``bench/fleet.py`` start them so).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.components import free_port, wait_http

REPO = Path(__file__).resolve().parents[2]


class ReplicaProcess:
    """One replica process on a fixed loopback port: start, SIGKILL, start again on the same port."""

    def __init__(self, port: int | None = None, delay_ms: float = 0.0, log_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self.delay_ms = delay_ms
        self.log = (log_dir or Path("/tmp")) / f"replica-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> ReplicaProcess:
        cmd = [sys.executable, "-m", "gpt_observatory.demo.upstream", "--port", str(self.port),
               "--delay-ms", str(self.delay_ms)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         env={**os.environ, "PYTHONPATH": str(REPO)})
        wait_http(self.url + "/models", timeout, self.proc, self.log)
        return self

    def kill(self) -> None:
        """SIGKILL: no graceful close, in-flight connections die with it."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


@contextlib.contextmanager
def replicas(count: int, delays_ms: list[float] | None = None, log_dir: Path | None = None) -> Iterator[list[ReplicaProcess]]:
    """``count`` replica processes (started one after another), stopped when the block ends."""
    procs = [ReplicaProcess(delay_ms=(delays_ms or [0.0] * count)[i], log_dir=log_dir) for i in range(count)]
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        for p in procs:
            p.stop()


def wait_until(predicate, timeout: float, step: float = 0.05) -> float:
    """Seconds until ``predicate()`` held; AssertionError after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(step)
    return time.monotonic() - start
