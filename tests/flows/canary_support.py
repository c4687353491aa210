"""The canary test rig: real gateway processes (``observatory serve`` with a canary share) on free
ports, a real Prometheus scraping them every second, versions of the configurable test model
(``canary_model.py``) in a real MLflow server, and a client load that records every answer."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests import components

CANARY_MODEL = Path(__file__).with_name("canary_model.py")
OBSERVATORY = [sys.executable, "-c", "from gpt_observatory.cli import main; main()"]


def register(tracking_uri: str, name: str, **config: Any) -> str:
    """Log the test model with ``config`` (label, delay_s, fail_share, fault_*) as a new version."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)  # registrations go to this server, whatever ran before
    with mlflow.start_run(run_name=f"canary test {config.get('label')}"):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(CANARY_MODEL), registered_model_name=name,
                                       model_config=config)
    return str(info.registered_model_version)


def bootstrap_champion(tracking_uri: str, name: str, version: str) -> None:
    """Make ``version`` the first champion, recorded like a promotion (rollback reads the history)."""
    from gpt_observatory.flows.history import Decision, record
    from gpt_observatory.flows.registry import CHAMPION, Registry
    from gpt_observatory.flows.stores import client_for

    client = client_for(tracking_uri)
    Registry(client, name).set_alias(CHAMPION, version)
    record(client, Decision.new(decision="promoted", model=name, version=version, from_version=None,
                                champion=version, reason="first version (canary test set-up)", figures={}))


@contextlib.contextmanager
def gateway(workdir: Path, model: str, tracking_uri: str, *options: str) -> Iterator[str]:
    """``observatory serve`` (mlflow backend, anonymous, 0.5 s alias polls) as a process; its URL."""
    port = components.free_port()
    log = workdir / f"gateway-{port}.log"
    env = {"OBSERVATORY_STATE_DIR": str(workdir / f"state-{port}"), "MLFLOW_TRACKING_URI": tracking_uri,
           "OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
           "OBSERVATORY_GPU_ENABLED": "false", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    proc = components.start_process(
        [*OBSERVATORY, "serve", "--backend", "mlflow", "--model", model, "--tracking-uri", tracking_uri,
         "--poll-interval", "0.5", "--port", str(port), "--allow-anonymous", "--generation-threads", "4",
         "--graceful-timeout", "2", *options], log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        components.wait_http(url + "/healthz", timeout=120, proc=proc, log=log)
        yield url
    finally:
        components.stop_process(proc)


def readyz(url: str) -> dict[str, Any]:
    try:
        return httpx.get(url + "/readyz", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return {}


def serving(url: str, champion: str, challenger: str | None) -> bool:
    """The gateway serves ``champion`` and (None: no) ``challenger``."""
    ready = readyz(url)
    if (ready.get("model") or {}).get("version") != champion:
        return False
    loaded = (ready.get("canary") or {}).get("challenger")
    return (loaded or {}).get("version") == challenger if challenger else loaded is None


@dataclass(frozen=True, slots=True)
class Answer:
    sent: float  # when the request went out
    at: float  # when its answer was complete
    ok: bool
    label: str | None  # the version label the answer starts with
    detail: str = ""


@dataclass
class Load:
    """Client threads sending OpenAI requests (streamed and not) to every gateway, round robin."""

    urls: list[str]
    model: str
    threads: int = 4
    pause_s: float = 0.05
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        self._stop.clear()
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for w in self._workers:
            w.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(30)

    def since(self, t: float) -> list[Answer]:
        """Answers to requests sent at ``t`` or later (one sent before may still finish after)."""
        return [a for a in list(self.answers) if a.sent >= t]

    def _run(self, i: int) -> None:
        n = 0
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                n += 1
                url = self.urls[(i + n) % len(self.urls)]
                self.answers.append(ask(client, url, self.model, stream=(i + n) % 2 == 0, user=uuid.uuid4().hex))
                time.sleep(self.pause_s)


def ask(client: httpx.Client, url: str, model: str, stream: bool = False, user: str | None = None) -> Answer:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": stream}
    sent = time.monotonic()
    if user:
        body["user"] = user
    try:
        if not stream:
            r = client.post(url + "/v1/chat/completions", json=body)
            if r.status_code != 200:
                return Answer(sent, time.monotonic(), False, None, f"HTTP {r.status_code}: {r.text[:200]}")
            return Answer(sent, time.monotonic(), True, _label(r.json()["choices"][0]["message"]["content"]))
        text = ""
        with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return Answer(sent, time.monotonic(), False, None, f"HTTP {r.status_code}")
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return Answer(sent, time.monotonic(), False, None, f"stream error: {event['error']}")
                for choice in event.get("choices") or ():
                    text += (choice.get("delta") or {}).get("content") or ""
        return Answer(sent, time.monotonic(), True, _label(text))
    except httpx.HTTPError as e:
        return Answer(sent, time.monotonic(), False, None, f"{type(e).__name__}: {e}")


def _label(text: str) -> str | None:
    m = re.match(r"v\d+", text)
    return m.group(0) if m else None
