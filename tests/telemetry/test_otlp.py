"""``otlp`` over gRPC into a receiver built from the official opentelemetry-proto services,
and what happens when that endpoint goes away and comes back."""

from __future__ import annotations

import time

from loguru import logger
from opentelemetry import metrics, trace

import telemetry
from telemetry import names
from tests.components import free_port, wait_for
from tests.telemetry.conftest import OtlpReceiver


def test_grpc_receives_traces_metrics_and_logs(otlp_receiver):
    handle = telemetry.configure(
        "otlp-svc", otlp_endpoint=otlp_receiver.endpoint, otlp_protocol="grpc", metric_export_interval_ms=500
    )
    assert handle.backends["traces"] == ["otlp"]
    counter = metrics.get_meter("t").create_counter(names.GATEWAY_REQUESTS.name)
    with trace.get_tracer("t").start_as_current_span("over-grpc"):
        logger.info("log over grpc")
        counter.add(1)
    handle.force_flush()
    wait_for(lambda: "over-grpc" in otlp_receiver.span_names(), what="span at the receiver")
    wait_for(lambda: names.GATEWAY_REQUESTS.name in otlp_receiver.metric_names(), what="metric at the receiver")
    wait_for(lambda: any(r.body.string_value == "log over grpc" for r in otlp_receiver.logs), what="log")
    (log,) = [r for r in otlp_receiver.logs if r.body.string_value == "log over grpc"]
    (span,) = [s for s in otlp_receiver.spans if s.name == "over-grpc"]
    assert log.trace_id == span.trace_id


def _spans_per_second(tracer, seconds: float) -> float:
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            with tracer.start_as_current_span("loop"):
                pass
        n += 100
    return n / seconds


def test_outage_does_not_slow_the_loop_counts_drops_and_recovers():
    receiver = OtlpReceiver(port=free_port())
    receiver.start()
    handle = telemetry.configure(
        "outage", otlp_endpoint=receiver.endpoint, otlp_protocol="grpc", otlp_timeout_ms=500, max_queue_size=512,
        schedule_delay_ms=50, metrics_exporter=["memory"], logs_exporter=["none"],
    )
    tracer = trace.get_tracer("outage")
    _spans_per_second(tracer, 0.3)  # warm up
    # Healthy and outage windows alternate, so load from other processes hits both alike.
    healthy, down = [], []
    for _ in range(3):
        if receiver.server is None:
            receiver.start()
        healthy.append(_spans_per_second(tracer, 0.5))
        receiver.stop()
        down.append(_spans_per_second(tracer, 0.5))
    assert max(down) >= max(healthy) / 1.2, f"loop slowed by the outage: healthy {healthy} vs down {down} spans/s"
    wait_for(lambda: handle.stats.drops("traces") > 0, what="drops counted")
    wait_for(lambda: handle.stats.failures("traces") > 0, timeout=15, what="export failures counted")
    dropped = {p.attributes[names.TELEMETRY_SIGNAL]: p.value
               for p in handle.memory.metrics()[names.TELEMETRY_DROPPED.name]}
    assert dropped["traces"] > 0

    # The endpoint comes back on the same port: new spans arrive.
    receiver.spans.clear()
    receiver.start()
    deadline = time.monotonic() + 30
    while "after-outage" not in receiver.span_names() and time.monotonic() < deadline:
        with tracer.start_as_current_span("after-outage"):
            pass
        time.sleep(0.2)
    receiver.stop()
    assert "after-outage" in receiver.span_names()
