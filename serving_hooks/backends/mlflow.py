"""Serve ``models:/{name}@{alias}`` from the MLflow registry and follow the alias.

A poller looks the alias up every ``poll_interval_s``; when it points at a new version, that
version is loaded off the event loop and swapped in (:meth:`InProcessBackend.swap`), so requests in
flight finish on the old version and new ones get the new version without a failure. When the
registry is unreachable the loaded version keeps serving and readiness says ``degraded``.

An ``optional`` alias (the canary's ``challenger``) may be absent: that is not an error, the
backend then holds no model (and a canary router sends it nothing) until the alias is set again.
Unloading happens on the event loop, so a router never picks a backend that is gone by the time
the request reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from loguru import logger
from opentelemetry import metrics

from gpt_observatory.serving_hooks.backends.base import Readiness
from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend, _describe
from gpt_observatory.serving_hooks.inference import GenAIHooks, ModelInfo
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.gpu_energy import DEFAULT_INTERVAL_S

LOOKUP_TIMEOUT_S = 5.0
_ABSENT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class RegistryUnreachable(RuntimeError):
    """The MLflow tracking server did not answer the alias lookup."""


class MlflowBackend(InProcessBackend):
    """The model behind ``alias`` of registered model ``model_name``, hot-swapped as the alias moves."""

    def __init__(
        self,
        hooks: GenAIHooks,
        model_name: str,
        *,
        alias: str = "champion",
        role: str = "champion",
        tracking_uri: str | None = None,
        poll_interval_s: float = 10.0,
        workers: int = 8,
        optional: bool = False,
        energy_interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        super().__init__(hooks, model_name, workers=workers, role=role, energy_interval_s=energy_interval_s)
        self.model_name = model_name
        self.alias = alias
        self.tracking_uri = tracking_uri
        self.poll_interval_s = poll_interval_s
        self.optional = optional
        self._task: asyncio.Task | None = None
        self._client: Any = None
        self._registry_uri: str | None = None
        self._workdir: Path | None = None
        self._registry_error: str | None = None
        meter = metrics.get_meter(__name__)
        m = names.MODEL_SWAPS
        self._swaps = meter.create_counter(m.name, m.unit, m.description)
        m = names.MODEL_REGISTRY_ERRORS
        self._errors = meter.create_counter(m.name, m.unit, m.description)

    async def start(self) -> None:
        await super().start()
        await asyncio.to_thread(self._connect)
        self._task = asyncio.create_task(self._poll_forever(), name=f"mlflow-poll-{self.model_name}@{self.alias}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await super().close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    async def readiness(self) -> Readiness:
        loaded = self.current
        error = self._registry_error
        if loaded is None:
            if error:
                return Readiness(False, "unavailable", f"model registry: {error}")
            return Readiness(False, "loading", f"loading models:/{self.model_name}@{self.alias}")
        info = _describe(loaded.info)
        if error:
            return Readiness(True, "degraded", f"model registry: {error}; serving the loaded version", info)
        return Readiness(True, "ok", info=info)

    async def poll(self) -> None:
        """Check the alias once and swap when it moved (also what the poller runs)."""
        try:
            absent = await asyncio.to_thread(self._check)
        except Exception as e:
            message = f"{type(e).__name__}: {e}"[:300]
            if message != self._registry_error:
                logger.warning("model registry check failed for {}@{}: {}", self.model_name, self.alias, message)
            self._registry_error = message
            self._errors.add(1, {names.MODEL_NAME: self.model_name, names.MODEL_ALIAS: self.alias})
        else:
            if self._registry_error is not None:
                logger.info("model registry reachable again for {}@{}", self.model_name, self.alias)
            self._registry_error = None
            if absent and self.current is not None:
                self._unload()

    def _unload(self) -> None:
        """Serve nothing from the next request on (requests in flight keep their model)."""
        loaded = self.current
        self._current = None
        if loaded is not None and loaded.info.version is not None and self._workdir is not None:
            shutil.rmtree(self._workdir / loaded.info.version, ignore_errors=True)
        logger.info("{}@{} is gone: no longer serving version {} as {}", self.model_name, self.alias,
                    loaded.info.version if loaded else None, self.role)

    async def _poll_forever(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.poll_interval_s)

    def _connect(self) -> None:
        import mlflow
        from mlflow import MlflowClient

        explicit = self.tracking_uri  # the server holds both the runs and the registry
        self.tracking_uri = explicit or mlflow.get_tracking_uri()
        self._registry_uri = explicit or mlflow.get_registry_uri()
        self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self._registry_uri)
        self._workdir = Path(tempfile.mkdtemp(prefix="observatory-model-"))

    def _lookup(self) -> str | None:
        """The version the alias points at; None when an optional alias is absent.

        Over HTTP the lookup is one request without MLflow's client-side retries (seven, with
        exponential backoff, by default): a server that dies mid-poll must turn readiness to
        ``degraded`` within one request timeout, not minutes later. The poller is the retry.
        """
        from mlflow.exceptions import MlflowException

        uri = self.tracking_uri or ""
        try:
            if uri.startswith(("http://", "https://")):
                return self._lookup_over_http(uri)
            return str(self._client.get_model_version_by_alias(self.model_name, self.alias).version)
        except MlflowException as e:
            if self.optional and e.error_code in _ABSENT:
                return None
            raise

    def _lookup_over_http(self, uri: str) -> str:
        from mlflow.exceptions import MlflowException
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint = "/api/2.0/mlflow/registered-models/alias"
        try:
            response = http_request(
                get_default_host_creds(uri), endpoint, "GET", params={"name": self.model_name, "alias": self.alias},
                max_retries=0, backoff_factor=0, timeout=LOOKUP_TIMEOUT_S, raise_on_status=False,
            )
        except MlflowException as e:
            raise RegistryUnreachable(f"{uri} did not answer ({e.message[:200]})") from None
        verify_rest_response(response, endpoint)  # an MlflowException with the server's error code
        return str(response.json()["model_version"]["version"])

    def _check(self) -> bool:
        """Load the version the alias points at if it is new; True when an optional alias is absent."""
        import mlflow.artifacts
        import mlflow.pyfunc

        version = self._lookup()
        if version is None:
            return True
        loaded = self.current
        if loaded is not None and loaded.info.version == version:
            return False
        # Downloaded with explicit URIs (no process-global MLflow settings), then loaded from disk.
        # A models:/ URI would be resolved through MLflow's process-wide registry URI, ignoring the
        # one given here, so the version's own artifact location is asked of our client instead.
        source = self._client.get_model_version_download_uri(self.model_name, version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(self._workdir / version), tracking_uri=self.tracking_uri,
        )
        model = mlflow.pyfunc.load_model(local)
        previous = loaded.info.version if loaded else None
        self.swap(model, ModelInfo(self.model_name, version, self.alias, self.role))
        if previous is not None:  # requests still on it hold the loaded object, not its files
            shutil.rmtree(self._workdir / previous, ignore_errors=True)
        attrs = {names.MODEL_NAME: self.model_name, names.MODEL_ALIAS: self.alias, names.MODEL_VERSION: version}
        self._swaps.add(1, attrs)
        logger.info("serving {}@{}: version {} (was {})", self.model_name, self.alias, version, previous)
        return False
