"""What the demo runs beside the pipeline: the embedded-default environment, the development IdP
with demo credentials, and the reference gateway as an ``observatory serve`` subprocess.

The gateway is a separate process on purpose: it is exactly what an operator runs, it has its
own telemetry resource (``service.name=observatory-gateway``, its own ``service.instance.id``)
and SIGTERM flushes its telemetry before it exits. It appends to the same JSON-lines files as
the demo process (``<state>/telemetry``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

MODEL = "tiny-gpt"
FLEET_MODEL = "fleet-echo"  # the replica pool of the catalog (gpt_observatory.demo.fleet)
AUDIENCE = "observatory"
SCOPE = "inference"
REQUESTS_PER_MINUTE = 12  # per tenant; the scripted client's "burst" tenant goes past it
POLL_INTERVAL_S = 1.0  # how fast the gateway notices a moved champion alias


@dataclass(frozen=True)
class Credentials:
    """What the scripted client (and a user of ``--keep-serving``) authenticates with.

    Kept in ``<state>/demo/credentials.json`` (mode 0600); telemetry never sees any of it.
    """

    issuer: str
    client_id: str
    client_secret: str
    api_key: str  # tenant "batch", scope inference: the streaming client
    burst_key: str  # tenant "burst": sent past the rate limit
    no_scope_key: str  # tenant "readonly", no scope: 403
    revoked_key: str  # revoked before use: 401 revoked
    trial_key: str  # tenant "trial": sent past its budget (gpt_observatory.demo.billing)


def prepare_environment(state: Path) -> None:
    """Embedded defaults for everything the demo starts; a variable the user already set wins.

    Prefect runs its local (ephemeral) API on its own home (``PREFECT_HOME``, ``~/.prefect`` by
    default), as ``observatory pipeline run`` does, so one Prefect UI shows both; its console
    handler only shows warnings (the demo shows progress itself; flow logs still reach the
    Prefect API and our telemetry).
    """
    os.environ["OBSERVATORY_STATE_DIR"] = str(state)
    defaults = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
        # a fresh local API migrates its database first: ~15 s here, more on a busy machine
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "MLFLOW_LOGGING_LEVEL": "ERROR",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    (state / "demo").mkdir(parents=True, exist_ok=True)


def make_credentials(state: Path, issuer: str) -> tuple[Credentials, Path]:
    """Fresh API keys (only hashes on disk) and an OAuth client secret; returns them and the key file."""
    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore

    keys_file = state / "demo" / "api-keys.json"
    keys_file.unlink(missing_ok=True)  # one demo run, one set of keys
    store = ApiKeyStore(keys_file)
    api_key, _ = store.create("batch", [SCOPE], name="demo streaming client")
    burst_key, _ = store.create("burst", [SCOPE], name="demo over-limit client")
    no_scope_key, _ = store.create("readonly", [], name="demo key without the inference scope")
    revoked_key, record = store.create("batch", [SCOPE], name="demo revoked key")
    store.revoke(record.key_id)
    trial_key, _ = store.create("trial", [SCOPE], name="demo client with a small budget")
    creds = Credentials(issuer, "demo-app", secrets.token_urlsafe(24), api_key, burst_key, no_scope_key, revoked_key,
                        trial_key)
    path = state / "demo" / "credentials.json"
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(creds), fh, indent=2)
    return creds, keys_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def observatory_command() -> list[str]:
    """The ``observatory`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("observatory")
    if script.exists():
        return [str(script)]
    found = shutil.which("observatory")
    return [found] if found else [sys.executable, "-c", "from gpt_observatory.cli import main; main()"]


@dataclass
class Gateway:
    """A running ``observatory serve`` subprocess."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    @property
    def address(self) -> str:
        """``host:port``, as a scrape target."""
        return self.url.removeprefix("http://")

    def readyz(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/readyz", timeout=5).json())

    def model_status(self) -> dict[str, Any]:
        """``MODEL``'s part of ``/readyz`` (a catalog of several models lists each under ``models``)."""
        body = self.readyz()
        return dict((body.get("models") or {}).get(MODEL) or body)

    def metrics_text(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def wait_serving(self, version: str | None = None, timeout: float = 90.0) -> dict[str, Any]:
        """Wait until ``/readyz`` is ready (on ``version`` when given); fail with the log tail."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError, ValueError):
                last = self.model_status()
                model = last.get("model") or {}
                if last.get("ready") and (version is None or model.get("version") == version):
                    return last
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        want = f" on version {version}" if version else ""
        raise RuntimeError(f"the gateway was not serving{want} within {timeout:.0f}s (last /readyz: {last}); "
                           f"log {self.log}:\n{tail}")

    def wait_challenger(self, version: str, timeout: float = 30.0) -> None:
        """Wait until the shadow (or canary) router has loaded the challenger ``version``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                loaded = ((self.model_status().get("canary") or {}).get("challenger") or {}).get("version")
                if loaded == version:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the gateway did not load challenger v{version} within {timeout:.0f}s")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (graceful: requests in flight finish, telemetry is flushed), then wait."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_gateway(
    state: Path, tracking_uri: str, creds: Credentials, keys_file: Path, catalog: str, metering: Sequence[str] = ()
) -> Gateway:
    """Start ``observatory serve`` on a free loopback port with the model catalog ``catalog`` (TOML):
    ``MODEL@champion`` in process (with a ``shadow_share``, mirroring that share of requests to
    ``MODEL@challenger`` while the alias exists: the callers only ever get the champion's answers),
    and the demo's replica pool (:mod:`gpt_observatory.demo.fleet`).

    Authentication: JWTs of the development IdP and the demo's API keys; model ``tiny-gpt``
    needs the ``inference`` scope; ``REQUESTS_PER_MINUTE`` per tenant. ``metering``: more ``serve``
    options (the demo's tenants, prices and usage ledger: :meth:`gpt_observatory.demo.billing.Files.serve_args`).
    """
    port = free_port()
    log = state / "demo" / "gateway.log"
    catalog_file = state / "demo" / "catalog.toml"
    catalog_file.write_text(catalog)
    env = {
        **os.environ,
        # the backend resolves models:/ URIs through MLflow's process-wide URI (see the report)
        "MLFLOW_TRACKING_URI": tracking_uri,
        "OBSERVATORY_AUTH_MODEL_SCOPES": json.dumps({MODEL: [SCOPE], FLEET_MODEL: [SCOPE]}),
        # exact per-tenant counts: a fixed window could reset in the middle of the over-limit burst
        "OBSERVATORY_SERVE_RATE_LIMIT_STRATEGY": "moving-window",
    }
    cmd = [
        *observatory_command(), "serve",
        "--backend", "mlflow", "--model", MODEL, "--tracking-uri", tracking_uri,
        "--poll-interval-s", str(POLL_INTERVAL_S), "--host", "127.0.0.1", "--port", str(port),
        "--oidc-issuer", creds.issuer, "--audience", AUDIENCE, "--api-keys-file", str(keys_file),
        "--requests-per-minute", str(REQUESTS_PER_MINUTE), "--graceful-timeout-s", "20",
        "--catalog-file", str(catalog_file), *metering,
    ]
    with open(log, "ab") as fh:
        # its own session: Ctrl-C reaches the demo, which then stops the gateway gracefully
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Gateway(f"http://127.0.0.1:{port}", proc, log)
