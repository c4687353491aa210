"""Per-request cost of the instrumentation pattern (3 nested spans, 4 metric records, 1 log)
through Observatory's API vs the bare OpenTelemetry SDK doing the same, side by side.

Both export to JSON-lines files in a temp folder with the same batch settings; console output
is off in both. Rounds alternate so machine noise hits all alike. Prints the ratio.

Observatory's pipeline is timed three ways, one pipeline behind all three: through the handle
(``handle.tracer``/``handle.meter``: the SDK's own tracer and instruments), through the global
API as the gateway gets them after ``configure()`` (``trace.get_tracer``/``metrics.get_meter``),
and through the global API from before the first ``configure()`` (what a module that takes its
tracer at import gets). The last two rows show what the global providers' delegation costs.

    python bench/telemetry_overhead.py [--requests 5000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def pattern(tracer, instruments, log) -> None:
    hist, counter, tokens, active = instruments
    with tracer.start_as_current_span("POST /v1/chat/completions"):
        active.add(1, {"http.route": "/v1/chat/completions"})
        with tracer.start_as_current_span("auth.verify"):
            pass
        with tracer.start_as_current_span("chat tiny-gpt"):
            log("generated 16 tokens for tenant acme")
        tokens.add(16, {"observatory.tenant": "acme", "gen_ai.token.type": "output"})
        counter.add(1, {"observatory.tenant": "acme", "http.response.status_code": 200})
        hist.record(0.012, {"http.route": "/v1/chat/completions", "http.response.status_code": 200})
        active.add(-1, {"http.route": "/v1/chat/completions"})


def make_instruments(meter):
    return (
        meter.create_histogram("http.server.request.duration", unit="s"),
        meter.create_counter("observatory.gateway.requests"),
        meter.create_counter("observatory.gateway.tokens"),
        meter.create_up_down_counter("http.server.active_requests"),
    )


def timed(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="obs-bench-")
    os.environ["OBSERVATORY_STATE_DIR"] = f"{tmp}/ours"

    from loguru import logger
    from opentelemetry import metrics, trace

    from gpt_observatory import telemetry
    from gpt_observatory.telemetry.backends.jsonl import JsonlLogExporter, JsonlMetricExporter, JsonlSpanExporter
    from gpt_observatory.telemetry.settings import load

    # Taken before configure(), as a module that gets its tracer at import does.
    early_tracer = trace.get_tracer("bench.early")
    early_instr = make_instruments(metrics.get_meter("bench.early"))

    # Ours: one call.
    handle = telemetry.configure("bench", console_logs=False, metric_export_interval_ms=60_000)
    ours_tracer = handle.tracer("bench")
    ours_instr = make_instruments(handle.meter("bench"))
    global_tracer = trace.get_tracer("bench.global")  # as the gateway takes them, after configure()
    global_instr = make_instruments(metrics.get_meter("bench.global"))

    # Bare SDK: the same exporters, wired by hand, logs through the SDK's logging handler.
    bare_settings = load(state_dir=f"{tmp}/bare")
    os.environ["OBSERVATORY_STATE_DIR"] = f"{tmp}/bare"
    resource = Resource.create({"service.name": "bench-bare"})
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(BatchSpanProcessor(JsonlSpanExporter(bare_settings), max_queue_size=8192,
                                             schedule_delay_millis=1000, max_export_batch_size=512))
    mp = MeterProvider(resource=resource, metric_readers=[
        PeriodicExportingMetricReader(JsonlMetricExporter(bare_settings), export_interval_millis=60_000)])
    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(BatchLogRecordProcessor(JsonlLogExporter(bare_settings), max_queue_size=8192))
    bare_log = logging.getLogger("bench.bare")
    bare_log.propagate = False
    bare_log.setLevel(logging.INFO)
    bare_log.addHandler(LoggingHandler(logger_provider=lp))
    bare_tracer = tp.get_tracer("bench")
    bare_instr = make_instruments(mp.get_meter("bench"))

    variants = {
        "observatory API": lambda: pattern(ours_tracer, ours_instr, logger.info),
        "  global API": lambda: pattern(global_tracer, global_instr, logger.info),
        "  global, early": lambda: pattern(early_tracer, early_instr, logger.info),
        "bare OTel SDK": lambda: pattern(bare_tracer, bare_instr, bare_log.info),
    }
    for fn in variants.values():
        timed(fn, 500)  # warm up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn, args.requests))
            handle.force_flush()
            tp.force_flush()
            lp.force_flush()
    cost = {name: statistics.median(values) for name, values in times.items()}
    o, b = cost["observatory API"], cost["bare OTel SDK"]
    print(f"requests/round={args.requests} rounds={args.rounds}")
    for name, value in cost.items():
        extra = f"  ({(value - o) * 1e6:+.1f} us vs the handle's)" if name.startswith("  ") else ""
        print(f"{name:<16}: {value * 1e6:8.1f} us/request (median){extra}")
    print(f"ratio ours/bare : {o / b:.3f}  (target <= 1.2)")
    print(f"ratio global/bare: {cost['  global API'] / b:.3f}, early/bare: {cost['  global, early'] / b:.3f}")
    print(f"drops: ours={handle.stats.drops()}")
    handle.shutdown()
    tp.shutdown()
    lp.shutdown()
    mp.shutdown()


if __name__ == "__main__":
    main()
