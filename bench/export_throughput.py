"""Sustained spans/s into the ``jsonl`` backend with zero drops, and peak RSS.

A producer thread creates spans at a fixed offered rate for a few seconds through the real
pipeline (batch processor, masking, counting, JSON-lines writer); the highest rate at which
nothing was dropped and every span reached the file is reported.

    python bench/export_throughput.py [--seconds 3] [--rates 10000,20000,30000,40000]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path


def run_rate(rate: int, seconds: float) -> tuple[int, int, int, float]:
    from gpt_observatory import telemetry
    tmp = tempfile.mkdtemp(prefix="obs-tput-")
    os.environ["OBSERVATORY_STATE_DIR"] = tmp
    handle = telemetry.configure(f"tput-{rate}", metrics_exporter=["none"], logs_exporter=["none"],
                                 max_queue_size=8192, schedule_delay_ms=200)
    tracer = handle.tracer("tput")
    total = int(rate * seconds)
    start = time.perf_counter()
    batch = max(1, rate // 1000)  # pace in 1 ms steps
    sent = 0
    while sent < total:
        for _ in range(batch):
            with tracer.start_as_current_span("s", attributes={"i": sent}):
                pass
            sent += 1
        target = start + sent / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.perf_counter() - start
    handle.shutdown()
    lines = 0
    for f in (Path(tmp) / "telemetry").glob("traces.jsonl*"):  # rotated files included
        with open(f, "rb") as fh:
            lines += sum(1 for _ in fh)
    return sent, lines, handle.stats.drops(), sent / elapsed


def producer_ceiling(seconds: float) -> float:
    """Spans/s the same loop reaches with a bare SDK provider and no processor at all."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("ceiling")
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            with tracer.start_as_current_span("s", attributes={"i": n}):
                pass
            n += 1
    return n / seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rates", default="10000,20000,30000,40000,60000")
    args = ap.parse_args()
    ceiling = producer_ceiling(args.seconds)
    print(f"producer ceiling (bare SDK, no processor, nothing exported): {ceiling:.0f} spans/s")
    best = 0.0
    for rate in (int(r) for r in args.rates.split(",")):
        sent, written, drops, achieved = run_rate(rate, args.seconds)
        ok = drops == 0 and written == sent
        print(f"offered {rate:>6}/s achieved {achieved:>8.0f}/s sent={sent} written={written} drops={drops} "
              f"{'OK' if ok else 'LOSS'}")
        if ok and achieved >= rate * 0.95:
            best = max(best, achieved)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"sustained with zero drops: {best:.0f} spans/s (target >= 20000) = {best / ceiling:.2f} of the producer "
          f"ceiling; peak RSS {peak_rss_mb:.0f} MiB")


if __name__ == "__main__":
    main()
