"""One ``observatory demo --json`` run per test session, shared by ``tests/test_demo.py`` (the
summary) and the reliability suite (its telemetry scanned for secrets)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import components
from tests.reliability.support import env_without_settings

TIMEOUT_S = 150  # the demo's own budget is 120 s here


@dataclass(frozen=True)
class DemoRun:
    state: Path
    summary: dict[str, Any]
    stdout: str
    stderr: str
    wall_s: float
    env: dict[str, str]  # the demo's environment: later commands on its state folder use it


_run: DemoRun | None = None


def demo_run(workdir: Path) -> DemoRun:
    """The session's demo run (made on first use, in ``workdir``, on a fresh state folder)."""
    global _run
    if _run is None:
        _run = _start(workdir)
    return _run


def _start(workdir: Path) -> DemoRun:
    state, out = workdir / "state", workdir / "summary.json"
    # A Prefect home of its own: the first-run cost (Prefect migrates a new database) is measured,
    # and the developer's ~/.prefect is left alone.
    env = {**env_without_settings(), "OBSERVATORY_STATE_DIR": str(state), "PREFECT_HOME": str(workdir / "prefect"),
           "COLUMNS": "120"}
    start = time.monotonic()
    done = subprocess.run([components.require_binary("observatory"), "demo", "--json", str(out)], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise AssertionError(f"observatory demo failed ({done.returncode}):\n{done.stderr[-4000:]}")
    print(f"observatory demo: {wall:.1f} s wall", file=sys.stderr)
    return DemoRun(state, json.loads(out.read_text()), done.stdout, done.stderr, wall, env)
