"""configure(): global providers, idempotency, the memory backend, sampling, shutdown."""

from __future__ import annotations

from opentelemetry import metrics, trace

from gpt_observatory import telemetry
from gpt_observatory.telemetry import names

MEMORY = {"traces_exporter": ["memory"], "metrics_exporter": ["memory"], "logs_exporter": ["memory"]}


def test_configure_sets_global_providers_and_resource():
    handle = telemetry.configure("svc-a", service_version="1.2.3", environment="staging", **MEMORY)
    assert trace.get_tracer_provider().behind is handle.tracer_provider
    assert metrics.get_meter_provider().behind is handle.meter_provider
    with trace.get_tracer("t").start_as_current_span("work"):
        pass
    (span,) = handle.memory.spans()
    attrs = span.resource.attributes
    assert attrs[names.SERVICE_NAME] == "svc-a"
    assert attrs[names.SERVICE_VERSION] == "1.2.3"
    assert attrs[names.DEPLOYMENT_ENVIRONMENT] == "staging"
    assert attrs[names.HOST_NAME]


def test_configure_is_idempotent_and_reconfigures_on_new_settings():
    first = telemetry.configure("svc", **MEMORY)
    assert telemetry.configure() is first
    assert telemetry.configure("svc", **MEMORY) is first
    second = telemetry.configure("svc-b", **MEMORY)
    assert second is not first and first.closed
    assert trace.get_tracer_provider().behind is second.tracer_provider


def test_none_switches_a_signal_off():
    handle = telemetry.configure("svc", traces_exporter=["none"], metrics_exporter=["memory"], logs_exporter=["none"])
    assert handle.tracer_provider is None and handle.logger_provider is None
    assert handle.meter_provider is not None


def test_sampler_always_off_records_nothing():
    handle = telemetry.configure("svc", sampler="always_off", **MEMORY)
    with trace.get_tracer("t").start_as_current_span("dropped"):
        pass
    assert handle.memory.spans() == []


def test_health_counters_are_exported_as_metrics():
    handle = telemetry.configure("svc", **MEMORY)
    with trace.get_tracer("t").start_as_current_span("one"):
        pass
    handle.force_flush()
    points = handle.memory.metrics()[names.TELEMETRY_EXPORTED.name]
    ok = [p for p in points if p.attributes[names.TELEMETRY_OUTCOME] == "success"
          and p.attributes[names.TELEMETRY_SIGNAL] == "traces"]
    assert ok and ok[0].value >= 1
    assert names.TELEMETRY_DROPPED.name in handle.memory.metrics()


def test_shutdown_flushes_and_is_safe_twice(tmp_path):
    handle = telemetry.configure("svc", schedule_delay_ms=60_000)
    with trace.get_tracer("t").start_as_current_span("late"):
        pass
    handle.shutdown()
    handle.shutdown()
    assert telemetry.current() is None
    lines = (tmp_path / "state" / "telemetry" / "traces.jsonl").read_text().splitlines()
    assert len(lines) == 1
