"""The demo's release manager: it answers the approval the ``canary`` flow waits for, through the
CLI, as a person would.

While the flow judges the challenger, a thread watches for its approval to be pending; then it runs
``observatory pipeline pending`` (printed, so the run id and figures are on screen) and
``observatory pipeline approve RUN_ID --approver … --reason …`` as subprocesses, against the same
Prefect API as the flow (the local one this process started, or ``PREFECT_API_URL``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console

from gpt_observatory.demo.stack import MODEL, observatory_command

APPROVER = "demo-release-manager"
REASON = "shadow figures reviewed in the demo"


@dataclass
class ApprovalReport:
    """What the approver saw and did (``None`` fields: it was never asked)."""

    run_id: str | None = None
    run_name: str | None = None
    asked_after_s: float | None = None  # from the start of the judging to the pending approval
    commands: list[str] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    approver: str = APPROVER
    reason: str = REASON
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prefect_api_url() -> str:
    """The Prefect API the flows of this process use: ``PREFECT_API_URL``, else the local server."""
    from prefect.settings import PREFECT_API_URL

    configured = PREFECT_API_URL.value()
    if configured:
        return str(configured)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the process-wide one Prefect's client started
    if not server.running:
        raise RuntimeError("Prefect's local API is not running in this process")
    return server.api_url


class Approver:
    """Approve ``MODEL`` v``version`` through the CLI once its flow run waits; a context manager."""

    def __init__(self, console: Console, version: str, poll_s: float = 0.5) -> None:
        self.console, self.version, self.poll_s = console, version, poll_s
        self.report = ApprovalReport()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-approver", daemon=True)
        self._start = time.monotonic()

    def __enter__(self) -> Approver:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        try:
            waiting = self._wait_for_pending()
            if waiting is None:
                return
            self.report.run_id, self.report.run_name = waiting.run_id, waiting.run_name
            self.report.asked_after_s = round(time.monotonic() - self._start, 1)
            env = {**os.environ, "PREFECT_API_URL": prefect_api_url(), "COLUMNS": str(self.console.width)}
            self._cli(["pipeline", "pending"], env)
            self._cli(["pipeline", "approve", waiting.run_id, "--approver", APPROVER, "--reason", REASON], env)
        except Exception as e:  # the flow's own timeout then decides; the summary says why
            self.report.error = f"{type(e).__name__}: {e}"

    def _wait_for_pending(self) -> Any:
        from gpt_observatory.flows.approval import pending

        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # the API may be busy; look again
                for p in pending():
                    if (p.model, p.version) == (MODEL, self.version):
                        return p
            self._stop.wait(self.poll_s)
        return None

    def _cli(self, args: list[str], env: dict[str, str]) -> None:
        shown = "observatory " + " ".join(f"'{a}'" if " " in a else a for a in args)
        self.console.print(f"[bold]$ {shown}[/]", highlight=False)
        done = subprocess.run([*observatory_command(), *args], env=env, capture_output=True, text=True, timeout=120)
        self.console.print((done.stdout + done.stderr).rstrip(), highlight=False, markup=False)
        self.report.commands.append(shown)
        self.report.exit_codes.append(done.returncode)
        if done.returncode != 0:
            raise RuntimeError(f"{shown} exited with {done.returncode}")
