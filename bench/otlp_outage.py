"""How much an OTLP endpoint outage slows a loop that produces spans (issue 2: at most 1.2x).

One process, one telemetry pipeline exporting over OTLP/gRPC to a local receiver built from the
official opentelemetry-proto services. Windows with the receiver up and with it stopped alternate,
so whatever else loads the machine hits both alike; the best window of each is compared.

    python bench/otlp_outage.py [--windows 5] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from concurrent import futures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """An OTLP/gRPC trace receiver that counts spans; stop() makes the endpoint refuse connections."""

    def __init__(self, port: int) -> None:
        self.port, self.spans, self.server = port, 0, None

    def start(self) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                receiver.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None).wait()
            self.server = None


def spans_per_second(tracer, seconds: float) -> float:
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            with tracer.start_as_current_span("loop"):
                pass
        n += 100
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=5, help="healthy/outage window pairs")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one window")
    args = parser.parse_args()

    os.environ["OBSERVATORY_STATE_DIR"] = tempfile.mkdtemp(prefix="obs-outage-")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # the channel logs every refused reconnect
    import telemetry

    receiver = Receiver(free_port())
    receiver.start()
    handle = telemetry.configure(
        "otlp-outage", otlp_endpoint=f"http://127.0.0.1:{receiver.port}", otlp_protocol="grpc",
        otlp_timeout_ms=1000, max_queue_size=2048, schedule_delay_ms=100,
        metrics_exporter=["none"], logs_exporter=["none"],
    )
    tracer = handle.tracer("bench")
    spans_per_second(tracer, 0.5)  # warm up
    healthy, down = [], []
    for _ in range(args.windows):
        if receiver.server is None:
            receiver.start()
        healthy.append(spans_per_second(tracer, args.seconds))
        receiver.stop()
        down.append(spans_per_second(tracer, args.seconds))
    receiver.start()
    handle.force_flush(10_000)
    drops, failures = handle.stats.drops("traces"), handle.stats.failures("traces")
    handle.shutdown()
    receiver.stop()

    print(f"{'window':<8}{'healthy spans/s':>18}{'endpoint down spans/s':>24}")
    for i, (h, d) in enumerate(zip(healthy, down, strict=True)):
        print(f"{i:<8}{h:>18,.0f}{d:>24,.0f}")
    ratio = max(healthy) / max(down)
    print(f"\nslow-down with the endpoint down (best healthy / best down): {ratio:.2f}x (target <= 1.2)")
    print(f"spans received {receiver.spans:,}, dropped (counted) {drops:,}, failed exports (counted) {failures:,}")


if __name__ == "__main__":
    main()
