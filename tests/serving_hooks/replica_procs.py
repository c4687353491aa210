"""Replicas as real processes: the test upstream (``upstream_peer.py``) in a subprocess each, on a
port of its own that it keeps across a kill and a restart, optionally answering after a delay.

Each is ``python -m gpt_observatory.demo.upstream --port P [--delay-ms D]`` (the pool tests and
``bench/fleet.py`` start them so).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from gpt_observatory.demo.fleet import Replica
from tests.components import free_port

REPO = Path(__file__).resolve().parents[2]


class ReplicaProcess(Replica):
    """One replica process on a fixed loopback port (the demo's :class:`Replica`): start, SIGKILL, start
    again on the same port; its log ``replica-PORT.log`` in ``log_dir``."""

    def __init__(self, port: int | None = None, delay_ms: float = 0.0, log_dir: Path | None = None) -> None:
        port = port or free_port()
        super().__init__(f"replica-{port}", log_dir or Path("/tmp"), delay_ms, port)


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
