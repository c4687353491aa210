"""``otlp`` over gRPC into a receiver built from the official opentelemetry-proto services,
and what happens when that endpoint goes away and comes back."""

from __future__ import annotations

import socket
import time

from loguru import logger
from opentelemetry import metrics, trace

from gpt_observatory import telemetry
from gpt_observatory.telemetry import names
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


def _seconds_to_produce(tracer, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        with tracer.start_as_current_span("loop"):
            pass
    return time.perf_counter() - start


def test_outage_never_blocks_the_loop_counts_drops_and_recovers():
    """With the endpoint gone every export waits out its 4 s deadline; the loop must not wait with it.

    The slow-down ratio (issue 2: at most 1.2x) is a timing figure and is measured side by side in
    ``bench/otlp_outage.py``; here the behaviour behind it: producing ten queues' worth of spans
    finishes well inside one export deadline, so no span end ever waited on the exporter.
    """
    receiver = OtlpReceiver(port=free_port())
    receiver.start()
    timeout_s = 4.0
    handle = telemetry.configure(
        "outage", otlp_endpoint=receiver.endpoint, otlp_protocol="grpc", otlp_timeout_ms=int(timeout_s * 1000),
        max_queue_size=512, schedule_delay_ms=50, metrics_exporter=["memory"], logs_exporter=["none"],
    )
    tracer = trace.get_tracer("outage")
    _seconds_to_produce(tracer, 500)  # warm up while the endpoint is healthy
    receiver.stop()
    elapsed = _seconds_to_produce(tracer, 5120)
    assert elapsed < timeout_s, f"5120 spans took {elapsed:.2f}s with the endpoint down: the loop waited on export"
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


def test_shutdown_with_an_endpoint_that_never_answers_ends_within_its_timeout(capfd):
    """A collector that accepts connections and never answers: each provider's shutdown would wait
    out its export (10 s here, 30 s in the SDK per provider, one after the other); ours run together
    against one deadline and leave behind whatever still hangs at it."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)  # the kernel completes the handshakes; nothing ever reads or answers
    try:
        handle = telemetry.configure("blackhole", otlp_endpoint=f"http://127.0.0.1:{hole.getsockname()[1]}",
                                     otlp_protocol="grpc", otlp_timeout_ms=10_000, metric_export_interval_ms=60_000)
        assert handle.backends == {"traces": ["otlp"], "metrics": ["otlp"], "logs": ["otlp"]}
        with trace.get_tracer("t").start_as_current_span("never-delivered"):
            logger.info("never delivered either")
            metrics.get_meter("t").create_counter(names.GATEWAY_REQUESTS.name).add(1)
        start = time.monotonic()
        handle.shutdown(timeout_s=2.0)
        elapsed = time.monotonic() - start
    finally:
        hole.close()
    assert elapsed < 2.0 + 1.0, f"shutdown took {elapsed:.1f}s with a 2 s deadline"
    assert "did not finish shutting down within 2 s" in capfd.readouterr().err
