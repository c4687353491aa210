"""``pushgateway``: metrics pushed to a Prometheus Pushgateway, for batch jobs.

Pushes every ``metric_export_interval_ms`` and once more at flush and shutdown, so a job's
final values arrive even when it ends between intervals.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

from loguru import logger
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry, push_to_gateway

from gpt_observatory.telemetry.backends._base import SettingsBackend
from gpt_observatory.telemetry.redact import DEFAULT
from gpt_observatory.telemetry.settings import Settings, load


class PushgatewayMetricReader(SettingsBackend, PrometheusMetricReader):
    def __init__(self, settings: Settings | None = None):
        settings = settings or load()
        self.url = settings.pushgateway_url
        self.job = settings.pushgateway_job or settings.service_name
        self.grouping_key = {"instance": socket.gethostname()}
        self.on_result: Callable[[bool, int], None] = lambda ok, n: None  # set by configure() to count
        self._timeout = settings.otlp_timeout_ms / 1000
        self.redactor = DEFAULT  # configure() sets the configured one
        self._push_registry = CollectorRegistry()
        super().__init__(registry=self._push_registry)
        self._stop = threading.Event()
        self._interval = settings.metric_export_interval_ms / 1000
        self._thread = threading.Thread(target=self._loop, name="observatory-pushgateway", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.push()

    def _receive_metrics(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        if metrics_data is not None:
            self.redactor.metrics_data(metrics_data)
        super()._receive_metrics(metrics_data, timeout_millis, **kwargs)

    def push(self) -> bool:
        """Push the current values; count and log a failure, never raise."""
        try:
            push_to_gateway(
                self.url, job=self.job, registry=self._push_registry, grouping_key=self.grouping_key,
                timeout=self._timeout,
            )
            self.on_result(True, 1)
            return True
        except Exception as e:  # export boundary: an outage is counted, not raised
            self.on_result(False, 1)
            logger.warning("pushgateway push to {} failed: {}", self.url, e)
            return False

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.push()

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._stop.set()
        self.push()
        super().shutdown(timeout_millis=timeout_millis)
