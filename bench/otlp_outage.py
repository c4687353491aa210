"""How much an OTLP endpoint outage slows a loop that produces spans (issue 2: at most 1.2x).

One process, one telemetry pipeline exporting over OTLP/gRPC to the tests' receiver (built from the
official opentelemetry-proto services). Windows with the receiver up and with it stopped alternate,
so whatever else loads the machine hits both alike; the best window of each is compared.

    python bench/otlp_outage.py [--windows 5] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' OTLP receiver and free_port


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
    from gpt_observatory import telemetry
    from tests.components import free_port
    from tests.telemetry.conftest import OtlpReceiver

    receiver = OtlpReceiver(port=free_port())
    receiver.start()
    handle = telemetry.configure(
        "otlp-outage", otlp_endpoint=receiver.endpoint, otlp_protocol="grpc",
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
    print(f"spans received {len(receiver.spans):,}, dropped (counted) {drops:,}, failed exports (counted) {failures:,}")


if __name__ == "__main__":
    main()
