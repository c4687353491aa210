"""The demo's judging of the challenger: Prometheus scraping the gateway, steady traffic from the
scripted client, and the ``canary`` flow (issue 7) judging the challenger against the champion on
shadow traffic: the gateway mirrors every request to the challenger after the champion answered
(``--shadow-share 1``), so no user is served by it (``canary_source = "shadow"``). A pass then waits
for approval (``approval = "required"``), which the demo gives through the CLI (:mod:`.approver`).

It needs the Debian/upstream ``prometheus`` binary (the canary flow reads Prometheus's HTTP API);
without it, or without the flow, the demo judges the challenger by the offline gates instead.
The traffic comes from one tenant of the demo's internal tier (JWTs minted by the development IdP),
which has no rate limit to speak of: the over-limit requests stay the scripted ones.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import httpx

from gpt_observatory.demo.billing import CANARY_TENANT
from gpt_observatory.demo.stack import MODEL, SCOPE, free_port

WINDOW_S = 6.0  # one analysis window; the flow looks every STEP_S and may extend it once
STEP_S = 2.0
CANARY_SETTINGS: dict[str, Any] = {
    "min_requests": 15,  # per side, before any verdict
    "guard_duration_s": 0,  # the demo does not wait for the post-promotion guard
    "max_extensions": 1,
    "latency_tolerance_s": 0.05,  # a busy 2-core CPU box: smaller latency differences are noise
    "canary_source": "shadow",  # judged on mirrored requests: no user sees the challenger
}
SHADOW_SHARE = 1.0  # of requests mirrored to the challenger while it is judged
# The pass waits for a person: the demo's approver answers within seconds; no answer in this long
# counts as a rejection (and the demo goes on).
APPROVAL: dict[str, Any] = {"approval": "required", "approval_poll_s": 1, "approval_timeout_s": 90}


def unavailable() -> str | None:
    """Why the live canary cannot run here (None: it can)."""
    if find_spec("gpt_observatory.flows.canary") is None or not hasattr(import_module("gpt_observatory.flows.canary"), "canary"):
        return "this checkout has no canary flow"
    if shutil.which("prometheus") is None:
        return "no prometheus binary on PATH (the canary flow reads Prometheus)"
    return None


@dataclass
class Prometheus:
    """A Prometheus server scraping the gateway every second, its data in the state folder."""

    url: str
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, folder: Path, target: str) -> Prometheus:
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
            f"  - job_name: observatory-gateway\n    static_configs:\n      - targets: ['{target}']\n"
        )
        port = free_port()
        with open(folder / "prometheus.log", "ab") as log:
            proc = subprocess.Popen(
                [str(shutil.which("prometheus")), f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return cls(f"http://127.0.0.1:{port}", proc)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/-/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"Prometheus did not become ready at {self.url}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class LiveTraffic:
    """Closed-loop chat completions (every other one streamed) from ``workers`` threads as the
    ``tenant`` of the demo's internal tier (a rate limit it never reaches), until stopped; each answer's
    usage goes to ``spend`` when given."""

    base_url: str
    idp: Any
    workers: int = 2
    tenant: str = CANARY_TENANT
    spend: Any = None  # gpt_observatory.demo.billing.Spend
    statuses: Counter[int] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> LiveTraffic:
        for i in range(self.workers):
            thread = threading.Thread(target=self._run, args=(i,), name=f"demo-canary-traffic-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, worker: int) -> None:
        import openai

        from gpt_observatory.demo.client import PROMPTS

        token = self.idp.mint(f"{self.tenant}-{worker}", tenant=self.tenant, scopes=[SCOPE])
        client = openai.OpenAI(base_url=self.base_url, api_key=token, max_retries=0, timeout=60)
        n = 0
        while not self._stop.is_set():
            messages = [{"role": "user", "content": PROMPTS[n % len(PROMPTS)]}]
            status, usage = 200, None
            try:
                if n % 2:
                    for chunk in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12,
                                                                stream=True, stream_options={"include_usage": True}):
                        usage = chunk.usage or usage
                else:
                    usage = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12).usage
            except openai.APIStatusError as e:
                status = e.status_code
            except openai.APIConnectionError:
                status = 0
            with self._lock:
                self.statuses[status] += 1
            if self.spend is not None:
                self.spend.note(self.tenant, MODEL, status, usage)
            n += 1


def run_canary(prometheus_url: str, version: str) -> Any:
    """The canary flow on ``version`` (the challenger), on shadow figures, with approval; its outcome."""
    canary = import_module("gpt_observatory.flows.canary").canary
    return canary(model_name=MODEL, version=version, prometheus_url=prometheus_url, window_s=WINDOW_S,
                  step_s=STEP_S, canary_settings=CANARY_SETTINGS, overrides={"progress": False, **APPROVAL})
