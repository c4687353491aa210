"""Helpers for the reliability tests: the gateway as a real ``observatory serve`` subprocess, a
load generator whose every request carries its own trace id, and readers of what was exported."""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import mlflow

from gpt_observatory.demo.readback import Scrape
from gpt_observatory.telemetry import names
from tests import components

SLOW_PYFUNC = Path(__file__).with_name("slow_pyfunc.py")
GATEWAY_SERVICE = "observatory-gateway"


# ------------------------------------------------------------------ registry
_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def mlflow_at(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for the block, then restore it and the environment
    variables MLflow sets with it (children of this process would inherit them)."""
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri(), {k: os.environ.get(k) for k in _MLFLOW_ENV}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
        for key, value in before[2].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def register_slow_model(uri: str, name: str, label: str, delay_s: float, artifacts: Path | None = None) -> str:
    """Log the slow model (answers start with ``label``; ``delay_s`` per token) as a new version of
    ``name``; its files go to ``artifacts`` (else where the store puts them, e.g. a server)."""
    experiment = None
    if artifacts is not None:
        client = mlflow.MlflowClient(uri)
        found = client.get_experiment_by_name("reliability")
        experiment = found.experiment_id if found else client.create_experiment(
            "reliability", artifact_location=artifacts.resolve().as_uri())
    with mlflow_at(uri), mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(SLOW_PYFUNC), registered_model_name=name,
                                       model_config={"label": label, "delay_s": delay_s})
    return str(info.registered_model_version)


def set_champion(uri: str, name: str, version: str) -> None:
    from gpt_observatory.flows.registry import CHAMPION, Registry
    from gpt_observatory.flows.stores import client_for

    Registry(client_for(uri), name).set_alias(CHAMPION, version)


def api_key(path: Path, tenant: str = "acme") -> str:
    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore

    key, _ = ApiKeyStore(path).create(tenant, ["inference"])
    return key


# ------------------------------------------------------------------ the gateway process
@dataclass
class GatewayProcess:
    """``observatory serve`` in its own process, writing telemetry under ``state``."""

    url: str
    proc: Any
    log: Path
    state: Path

    @property
    def traces(self) -> Path:
        return self.state / "telemetry" / "traces.jsonl"

    @property
    def metrics_file(self) -> Path:
        return self.state / "telemetry" / "metrics.jsonl"

    def readyz(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/readyz", timeout=5).json())

    def scrape(self) -> Scrape:
        return Scrape(httpx.get(self.url + "/metrics", timeout=10).text)

    def wait_ready(self, version: str | None = None, timeout: float = 120.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"the gateway exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                body = self.readyz()
            except (httpx.HTTPError, ValueError):
                return None
            ok = body.get("ready") and (version is None or (body.get("model") or {}).get("version") == version)
            return body if ok else None

        return components.wait_for(ready, timeout=timeout, interval=0.2, what=f"the gateway to serve v{version}")

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        components.stop_process(self.proc, timeout=60)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def start_gateway(
    workdir: Path, tracking_uri: str, model: str, keys_file: Path, env: dict[str, str] | None = None,
    poll_interval: float = 0.5,
) -> GatewayProcess:
    port = components.free_port()
    state = workdir / "state"
    log = workdir / "gateway.log"
    cmd = [components.require_binary("observatory"), "serve", "--model", model, "--tracking-uri", tracking_uri,
           "--port", str(port), "--api-keys-file", str(keys_file), "--poll-interval", str(poll_interval),
           "--graceful-timeout", "30"]
    full_env = {
        "OBSERVATORY_STATE_DIR": str(state),
        # serving_hooks' mlflow backend resolves models:/ URIs through MLflow's process-wide URI
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTRY_URI": tracking_uri,
        **(env or {}),
    }
    proc = components.start_process(cmd, log, env=full_env, cwd=workdir)
    return GatewayProcess(f"http://127.0.0.1:{port}", proc, log, state)


# ------------------------------------------------------------------ load
@dataclass
class Result:
    trace_id: str
    status: int | None  # None: no HTTP answer (refused, reset)
    latency_s: float
    text: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


def call(url: str, key: str, model: str, max_tokens: int, stream: bool, timeout: float = 60.0) -> Result:
    """One chat completion on a fresh connection, with a traceparent of its own; the answer's text."""
    trace_id = secrets.token_hex(16)
    headers = {"authorization": f"Bearer {key}", "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
            "stream": stream}
    start = time.perf_counter()
    try:
        with httpx.Client(timeout=timeout) as client:
            r = client.post(url + "/v1/chat/completions", json=body, headers=headers)
            text = _sse_text(r.text) if stream and r.status_code == 200 else (
                r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text)
        return Result(trace_id, r.status_code, time.perf_counter() - start, text)
    except httpx.HTTPError as e:
        return Result(trace_id, None, time.perf_counter() - start, error=f"{type(e).__name__}: {e}")


def _sse_text(raw: str) -> str:
    """The content of an SSE chat stream; raises if it did not end with ``[DONE]``."""
    pieces, done = [], False
    for line in raw.splitlines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            done = True
            continue
        for choice in json.loads(data).get("choices", []):
            pieces.append(choice.get("delta", {}).get("content") or "")
    if not done:
        raise httpx.RemoteProtocolError("stream ended without [DONE]")
    return "".join(pieces)


@dataclass
class Load:
    """Closed-loop load from ``workers`` threads until stopped; every result is kept."""

    url: str
    key: str
    model: str
    max_tokens: int
    workers: int = 4
    pause_s: float = 0.0  # between a worker's requests
    results: list[Result] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for i in range(self.workers):
            t = threading.Thread(target=self._loop, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _loop(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            self.results.append(call(self.url, self.key, self.model, self.max_tokens, stream=(i + n) % 2 == 0))
            if self.pause_s:
                self._stop.wait(self.pause_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


# ------------------------------------------------------------------ exported telemetry
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    files = [*sorted(path.parent.glob(path.name + ".*")), path]
    return [json.loads(line) for f in files if f.is_file() for line in f.read_text().splitlines() if line.strip()]


def server_spans_by_trace(path: Path) -> dict[str, dict[str, Any]]:
    """The gateway's SERVER spans in a traces file, by trace id."""
    return {s["trace_id"]: s for s in read_jsonl(path)
            if s["kind"] == "SERVER" and s["resource"].get(names.SERVICE_NAME) == GATEWAY_SERVICE}


def last_counter(path: Path, metric: str) -> float:
    """A counter's final cumulative value in a metrics file (summed over its attribute sets)."""
    points = [p for p in read_jsonl(path) if p["name"] == metric and p.get(names.SERVICE_NAME) == GATEWAY_SERVICE]
    if not points:
        return 0.0
    last = max(p["time_unix_nano"] for p in points)
    return sum(p["value"] for p in points if p["time_unix_nano"] == last)


def env_without_settings() -> dict[str, str]:
    """This environment minus OTel/Observatory/Prefect/MLflow settings (a child starts on defaults)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OBSERVATORY_", "PREFECT_", "MLFLOW_"))}


class MlflowServer:
    """A real ``mlflow server`` (SQLite store, proxied artifacts) that can be stopped and started
    again on the same port and store, as an outage and its recovery."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = components.free_port()
        self.proc: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "mlflow-server.log"

    @property
    def store(self) -> str:
        """The backend store URI (what another replica, or an operator, writes to directly)."""
        return f"sqlite:///{self.workdir / 'mlflow.db'}"

    def start(self) -> None:
        self.spawn()
        self.wait()

    def spawn(self) -> None:
        """Start the process (it takes seconds to answer: see :meth:`wait`)."""
        self.proc = components.start_process(
            [components.require_binary("mlflow"), "server", "--backend-store-uri", self.store,
             "--artifacts-destination", str(self.workdir / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            self.log, env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )

    def wait(self) -> None:
        components.wait_http(self.url + "/health", timeout=120, proc=self.proc, log=self.log)

    def stop(self) -> None:
        if self.proc is not None:
            components.stop_process(self.proc)
            self.proc = None
