"""Start and stop the real components the tests talk to, on free loopback ports.

A component that cannot start raises (the test fails); nothing here skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Wait until ``url`` answers (any HTTP status below 500) or fail with the process log."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as e:
            if e.code < 500:
                return
            last = e
        except Exception as e:
            last = e
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{url} did not come up within {timeout}s ({last}); log tail:\n{tail}")


@dataclass
class Service:
    url: str
    port: int
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def start_process(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen(
        cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=cwd, start_new_session=True
    )


def require_binary(name: str) -> str:
    path = shutil.which(name) or (str(VENV_BIN / name) if (VENV_BIN / name).exists() else None)
    if not path:
        raise RuntimeError(f"{name} is not installed; run .ci/run (it installs the Debian packages) first")
    return path


@contextlib.contextmanager
def mlflow_server(workdir: Path, backend_store_uri: str | None = None) -> Iterator[Service]:
    """A real ``mlflow server`` (SQLite by default) with a local artifact root."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    store = backend_store_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    log = workdir / "mlflow-server.log"
    proc = start_process(
        [
            require_binary("mlflow"), "server",
            "--backend-store-uri", store,
            "--artifacts-destination", str(workdir / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        log,
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    svc = Service(f"http://127.0.0.1:{port}", port, proc, log)
    try:
        wait_http(svc.url + "/health", timeout=120, proc=proc, log=log)
        yield svc
    finally:
        svc.stop()


@contextlib.contextmanager
def prometheus(workdir: Path, scrape_targets: list[str], scrape_interval: str = "1s",
               extra_config: str = "") -> Iterator[Service]:
    """A real Prometheus scraping ``scrape_targets`` (host:port) every ``scrape_interval``."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    targets = ", ".join(f"'{t}'" for t in scrape_targets)
    cfg = workdir / "prometheus.yml"
    cfg.write_text(
        f"global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: {scrape_interval}\n"
        f"scrape_configs:\n  - job_name: observatory\n    static_configs:\n      - targets: [{targets}]\n"
        + extra_config
    )
    log = workdir / "prometheus.log"
    proc = start_process(
        [
            require_binary("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
        ],
        log,
    )
    svc = Service(f"http://127.0.0.1:{port}", port, proc, log)
    try:
        wait_http(svc.url + "/-/ready", timeout=60, proc=proc, log=log)
        yield svc
    finally:
        svc.stop()


@contextlib.contextmanager
def pushgateway(workdir: Path) -> Iterator[Service]:
    port = free_port()
    log = workdir / "pushgateway.log"
    proc = start_process(
        [require_binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{port}"], log
    )
    svc = Service(f"http://127.0.0.1:{port}", port, proc, log)
    try:
        wait_http(svc.url + "/-/ready", timeout=60, proc=proc, log=log)
        yield svc
    finally:
        svc.stop()


def query_prometheus(base_url: str, promql: str) -> list[dict]:
    """Run an instant PromQL query; return the result vector."""
    import json
    import urllib.parse

    url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"query {promql!r} failed: {body}")
    return body["data"]["result"]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.25, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; return it or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
