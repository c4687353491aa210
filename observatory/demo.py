"""``observatory demo``: telemetry on embedded defaults, a small traced, logged and metered
workload, and a summary of where everything went."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from loguru import logger
from opentelemetry import metrics, trace
from rich.console import Console
from rich.table import Table

import telemetry
from telemetry import names


def _workload(requests: int = 20, seed: int = 7) -> dict[str, Any]:
    """Requests shaped like the gateway's: a server span, an auth span, a GenAI span."""
    rng = random.Random(seed)
    tracer = trace.get_tracer("observatory.demo")
    meter = metrics.get_meter("observatory.demo")
    duration = meter.create_histogram(
        names.HTTP_SERVER_REQUEST_DURATION.name, unit="s",
        explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS),
    )
    tokens = meter.create_counter(names.GATEWAY_TOKENS.name, unit=names.GATEWAY_TOKENS.unit)
    reqs = meter.create_counter(names.GATEWAY_REQUESTS.name, unit=names.GATEWAY_REQUESTS.unit)
    outcomes: Counter[str] = Counter()
    latencies = []
    for i in range(requests):
        tenant = rng.choice(["acme", "globex"])
        start = time.perf_counter()
        with tracer.start_as_current_span("POST /v1/chat/completions", kind=trace.SpanKind.SERVER) as span:
            span.set_attribute(names.TENANT, tenant)
            with tracer.start_as_current_span(names.SPAN_AUTH_VERIFY) as auth:
                ok = i % 7 != 3
                auth.set_attribute(names.AUTH_OUTCOME, "ok" if ok else "expired")
            if ok:
                with tracer.start_as_current_span("chat tiny-gpt") as gen:
                    out = rng.randint(8, 32)
                    time.sleep(0.002)
                    gen.set_attribute(names.GEN_AI_USAGE_OUTPUT_TOKENS, out)
                tokens.add(out, {names.TENANT: tenant, names.GEN_AI_TOKEN_TYPE: "output"})
                logger.info("request {} served for tenant {}", i, tenant)
            else:
                logger.warning("request {} rejected: token expired", i)
            status = 200 if ok else 401
            outcomes[str(status)] += 1
            span.set_attribute(names.HTTP_RESPONSE_STATUS_CODE, status)
        elapsed = time.perf_counter() - start
        latencies.append(elapsed)
        duration.record(elapsed, {names.HTTP_ROUTE: "/v1/chat/completions", names.HTTP_RESPONSE_STATUS_CODE: status})
        reqs.add(1, {names.TENANT: tenant, names.HTTP_RESPONSE_STATUS_CODE: status})
    latencies.sort()
    return {
        "requests": dict(outcomes),
        "latency_p50_s": latencies[len(latencies) // 2],
        "latency_p95_s": latencies[int(len(latencies) * 0.95) - 1],
    }


def run(json_out: str | None = None, keep_serving: bool = False) -> dict[str, Any]:
    console = Console(stderr=True)
    handle = telemetry.configure("observatory-demo")
    console.rule("[bold]Observatory demo")
    with console.status("running a small traced, logged and metered workload"):
        summary = _workload()
    handle.shutdown()
    folder = Path(telemetry.state_dir()) / "telemetry"
    files = {s: str(folder / f"{s}.jsonl") for s in ("traces", "metrics", "logs")}
    spans = Counter(json.loads(line)["name"] for line in Path(files["traces"]).read_text().splitlines())
    summary.update({"spans_per_name": dict(spans), "telemetry_files": files, "backends": handle.backends})

    table = Table(title="Summary")
    table.add_column("what")
    table.add_column("value")
    for key, value in summary.items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else f"{value}")
    Console().print(table)
    if json_out:
        Path(json_out).write_text(json.dumps(summary, indent=2))
    return summary
