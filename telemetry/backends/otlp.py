"""``otlp``: OTLP over gRPC or HTTP/protobuf (``OTEL_EXPORTER_OTLP_PROTOCOL``), all three signals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk._logs.export import LogRecordExporter
from opentelemetry.sdk.metrics.export import MetricExporter, MetricsData
from opentelemetry.sdk.trace.export import SpanExporter

from gpt_observatory.telemetry.backends._base import SettingsBackend
from gpt_observatory.telemetry.settings import Settings, load

_HTTP_PATHS = {"traces": "/v1/traces", "metrics": "/v1/metrics", "logs": "/v1/logs"}


def _exporter_kwargs(settings: Settings, signal: str) -> dict[str, Any]:
    specific = getattr(settings, f"otlp_{signal}_endpoint")
    kwargs: dict[str, Any] = {"timeout": settings.otlp_timeout_ms / 1000}
    if settings.otlp_headers:
        kwargs["headers"] = dict(settings.otlp_headers)
    if settings.otlp_protocol == "grpc":
        endpoint = specific or settings.otlp_endpoint
        if endpoint:
            kwargs["endpoint"] = endpoint
        kwargs["insecure"] = settings.otlp_insecure
    else:
        if specific:
            kwargs["endpoint"] = specific
        elif settings.otlp_endpoint:
            kwargs["endpoint"] = settings.otlp_endpoint.rstrip("/") + _HTTP_PATHS[signal]
    return kwargs


def span_exporter(settings: Settings) -> SpanExporter:
    kwargs = _exporter_kwargs(settings, "traces")
    if settings.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(**kwargs)


class OtlpSpanExporter(SettingsBackend, SpanExporter):
    """Delegates to the gRPC or HTTP exporter chosen by the settings."""

    def __init__(self, settings: Settings | None = None):
        self.inner = span_exporter(settings or load())

    def export(self, spans: Sequence[Any]) -> Any:
        return self.inner.export(spans)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class OtlpMetricExporter(SettingsBackend, MetricExporter):
    def __init__(self, settings: Settings | None = None):
        settings = settings or load()
        kwargs = _exporter_kwargs(settings, "metrics")
        if settings.otlp_protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        self.inner = OTLPMetricExporter(**kwargs)
        super().__init__(
            preferred_temporality=self.inner._preferred_temporality,
            preferred_aggregation=self.inner._preferred_aggregation,
        )

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> Any:
        return self.inner.export(metrics_data, timeout_millis=timeout_millis)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis)


class OtlpLogExporter(SettingsBackend, LogRecordExporter):
    def __init__(self, settings: Settings | None = None):
        settings = settings or load()
        kwargs = _exporter_kwargs(settings, "logs")
        if settings.otlp_protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        else:
            from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        self.inner = OTLPLogExporter(**kwargs)

    def export(self, batch: Sequence[Any]) -> Any:
        return self.inner.export(batch)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
