"""``prometheus``: a pull endpoint (``/metrics``) on ``prometheus_host:prometheus_port``.

Series are registered in prometheus_client's default registry, so an app that serves
``/metrics`` itself (the reference gateway) exposes the same series.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import REGISTRY, start_http_server

from gpt_observatory.telemetry.backends._base import SettingsBackend
from gpt_observatory.telemetry.redact import DEFAULT
from gpt_observatory.telemetry.settings import ConfigError, Settings, load


class PrometheusPullReader(SettingsBackend, PrometheusMetricReader):
    def __init__(self, settings: Settings | None = None):
        settings = settings or load()
        super().__init__(registry=REGISTRY)
        self.redactor = DEFAULT  # configure() sets the configured one
        self.server = None
        self.port = settings.prometheus_port
        if settings.prometheus_serve:
            try:
                self.server, self._thread = start_http_server(settings.prometheus_port, settings.prometheus_host)
            except OSError as e:
                super().shutdown()
                raise ConfigError(
                    f"prometheus backend cannot listen on {settings.prometheus_host}:{settings.prometheus_port} "
                    f"(prometheus_port / OTEL_EXPORTER_PROMETHEUS_PORT): {e}"
                ) from e
            self.port = self.server.server_port

    def _receive_metrics(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        if metrics_data is not None:
            self.redactor.metrics_data(metrics_data)
        super()._receive_metrics(metrics_data, timeout_millis, **kwargs)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        super().shutdown(timeout_millis=timeout_millis)
