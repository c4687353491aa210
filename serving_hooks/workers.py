"""``serve --workers N``: a supervisor that runs N gateway worker processes on the sockets it bound.

The supervisor binds the API socket (and the admin one) once and hands them to every worker, as
uvicorn's and gunicorn's own ``--workers`` do: the kernel queues connections on the one socket and
whichever worker is free accepts. Chosen over ``SO_REUSEPORT`` (one socket per worker, the kernel
hashing connections across them) because with a shared socket a worker that drains or dies leaves
the connections queued for the others (a ``SO_REUSEPORT`` socket that closes drops its queue), port 0
and the admin listener need nothing more, and no other process of the same user can bind into the
port. Chosen over uvicorn's own supervisor (``uvicorn.supervisors.Multiprocess``) because each worker
here needs its index (its ``worker`` label and ``service.instance.id``, kept when a worker is
restarted in its place) and the supervisor serves the workers' shared rate-limit store.

Workers are spawned (not forked: the parent's threads and loaded libraries are not copied), each
told a :class:`Worker`. A worker that exits before it ever started serving stops the supervisor
with its exit code (its settings or its model are broken, and every restart would fail the same
way); one that dies later is started again under its index. SIGHUP is passed on to every worker
(each reloads the model catalog). SIGTERM or SIGINT to the supervisor is
passed to every worker as SIGTERM: each stops accepting, lets its requests in flight finish within
``graceful_timeout_s`` and flushes its telemetry; the supervisor waits for all of them (killing any
still there a few seconds past that), then closes the rate-limit store, which outlived them so that
draining requests could still settle their tokens. Workers ask the kernel for SIGTERM if the
supervisor itself dies (Linux), so none is left serving alone.

The supervisor's private folder (mode 0700) holds the unix sockets of the host rate-limit store
(:mod:`serving_hooks._hoststore`) and of each worker's metrics (:mod:`serving_hooks._worker_metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from loguru import logger

from gpt_observatory.serving_hooks import _hoststore

__all__ = ["Supervisor", "Worker"]

_SPAWN = multiprocessing.get_context("spawn")
_EXIT_MARGIN_S = 5.0  # past the graceful timeout: a worker's telemetry flush and interpreter exit
_POLL_S = 0.1


@dataclass(frozen=True)
class Worker:
    """What a worker process is told: which of ``count`` it is, and where the supervisor's sockets are."""

    index: int
    count: int
    folder: Path
    host_store: bool  # whether the supervisor serves the rate-limit store

    @property
    def store_socket(self) -> Path | None:
        """The host rate-limit store's socket, when the supervisor serves one."""
        return _store_socket(self.folder) if self.host_store else None

    def metrics_socket(self, index: int | None = None) -> Path:
        """The socket on which worker ``index`` (this one by default) answers with its own metrics."""
        return self.folder / f"metrics-{self.index if index is None else index}.sock"

    def metrics_sockets(self) -> dict[int, Path]:
        return {i: self.metrics_socket(i) for i in range(self.count)}


# target(worker, sockets, started, *args): serve on ``sockets`` and set ``started`` once serving.
Target = Callable[..., None]


class Supervisor:
    """Run ``count`` workers, each ``target(worker, sockets, started, *args)`` in a process of its own."""

    def __init__(
        self, target: Target, args: tuple[Any, ...], count: int, sockets: list[socket.socket], *,
        graceful_timeout_s: float, host_store: bool,
    ) -> None:
        self.target, self.args, self.count, self.sockets = target, args, count, sockets
        self.graceful_timeout_s = graceful_timeout_s
        self.host_store = host_store
        self.processes: dict[int, tuple[BaseProcess, Any]] = {}  # index -> (process, its started event)
        self.folder = Path()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (0 once every worker drained) or a worker fails to start (its code)."""
        self.folder = Path(tempfile.mkdtemp(prefix="observatory-workers-"))  # mode 0700
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                return runner.run(self._run())
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._signal_all, signal.SIGHUP)  # e.g. reload the catalog
        store = await _hoststore.serve(_store_socket(self.folder)) if self.host_store else None
        try:
            for index in range(self.count):
                self._start(Worker(index, self.count, self.folder, self.host_store))
            failed = await self._watch(stop)
            drained = await self._drain()  # the others stop too, gracefully, when one failed to start
            return failed if failed is not None else drained
        finally:
            self._kill_all()
            if store is not None:
                store.close()
                await store.wait_closed()

    def _start(self, worker: Worker) -> None:
        started = _SPAWN.Event()
        process = _SPAWN.Process(
            target=_worker_main, args=(self.target, worker, self.sockets, started, self.args),
            name=f"observatory-worker-{worker.index}",
        )
        process.start()
        self.processes[worker.index] = (process, started)

    async def _watch(self, stop: asyncio.Event) -> int | None:
        """Until ``stop``: restart a worker that died after it started; the exit code of one that died before."""
        while not stop.is_set():
            for index, (process, started) in list(self.processes.items()):
                if process.is_alive():
                    continue
                code = process.exitcode or 1
                if not started.is_set():
                    logger.error("gateway worker {} exited ({}) before it started serving; stopping", index, code)
                    return code
                logger.warning("gateway worker {} (pid {}) exited ({}); starting another", index, process.pid, code)
                self._start(Worker(index, self.count, self.folder, self.host_store))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _POLL_S)
        return None

    def _signal_all(self, sig: int) -> None:
        for process, _ in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                if process.pid is not None and process.is_alive():
                    os.kill(process.pid, sig)

    async def _drain(self) -> int:
        """SIGTERM every worker and wait until all exited: 0 when each exited cleanly."""
        self._signal_all(signal.SIGTERM)
        for sock in self.sockets:  # the workers hold their own copies; no new worker will need these
            sock.close()
        deadline = time.monotonic() + self.graceful_timeout_s + _EXIT_MARGIN_S
        while any(p.is_alive() for p, _ in self.processes.values()) and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_S)
        codes = [p.exitcode for p, _ in self.processes.values()]
        return 0 if all(code == 0 for code in codes) else 1

    def _kill_all(self) -> None:
        for process, _ in self.processes.values():
            if process.is_alive():
                logger.error("gateway worker (pid {}) did not stop in time; killing it", process.pid)
                process.kill()
            process.join(5)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop where it is installed (as uvicorn's workers use it): the host store answers faster."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def _store_socket(folder: Path) -> Path:
    return folder / "ratelimit.sock"


def _worker_main(target: Target, worker: Worker, sockets: list[socket.socket], started: Any,
                 args: tuple[Any, ...]) -> None:
    """A worker process: SIGTERM if the supervisor dies, SIGHUP ignored unless the gateway handles it
    (the catalog reload does), then the target (which exits with its code)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    target(worker, sockets, started, *args)
