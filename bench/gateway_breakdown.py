"""Where the gateway's per-request CPU goes: the in-process app driven over ASGI (no sockets, no
load generator), one layer added at a time, each in its own process, rounds interleaved.

1. ``bare``: the app with hooks off (no gateway, no auth, no telemetry SDK): the baseline of
   ``bench/gateway.py``'s hooks-on/off ratio.
2. ``gateway``: the gateway on (API-key auth, rate limits, metering, the GenAI hooks) with no
   telemetry SDK configured: the OpenTelemetry API's no-op providers stand in.
3. ``+ metrics``: the SDK's metrics pipeline (``jsonl``); traces off.
4. ``+ traces``: traces on too (``jsonl``): everything, as ``observatory serve`` runs by default.
5. ``+ traces 10 %``: as 4 with a parent-based 10 % trace sampler.
6. ``+ traces, no gc.freeze``: as 4 without freezing the startup heap, which every other variant
   does, as ``observatory serve`` does before it serves.

CPU time is the process's (every thread: export and metric collection included) per request, the
median of the rounds. ``ceiling`` is bare / variant: the best hooks-on/off throughput ratio a
server could reach if that CPU were all it spent (the load generator and the kernel's socket work
are left out, so ``bench/gateway.py``'s ratios read higher than this).

Run from the repository root: ``.venv/bin/python bench/gateway_breakdown.py [--requests 3000] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.gateway import CHAT, inprocess_app  # noqa: E402  (the same app and body as bench/gateway.py)

SAMPLED = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
VARIANTS = {  # name -> (gateway on, telemetry env or None for no SDK, startup heap frozen)
    "bare": (False, None, True),
    "gateway": (True, None, True),
    "+ metrics": (True, {"OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}, True),
    "+ traces": (True, {}, True),
    "+ traces 10 %": (True, SAMPLED, True),
    "+ traces, no gc.freeze": (True, {}, False),
}


async def drive(app, key: str, requests: int) -> float:
    """CPU seconds per request over ``requests`` POSTs of the bench's chat body (after a warm-up)."""
    body = json.dumps(CHAT).encode()
    headers = [(b"host", b"bench"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), (b"authorization", f"Bearer {key}".encode())]

    async def one() -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                 "query_string": b"", "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 2)}
        delivered = False
        statuses: list[int] = []

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # no disconnect while the app answers

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)
        if statuses != [200]:
            raise RuntimeError(f"expected one 200, got {statuses}")

    for _ in range(500):
        await one()
    start = time.process_time()
    for _ in range(requests):
        await one()
    return (time.process_time() - start) / requests


async def child(variant: str, requests: int, rounds: int, keys: str, key: str) -> list[float]:
    gateway, env, freeze = VARIANTS[variant]
    app = inprocess_app(0.0, gateway, keys, sdk=env is not None)
    if freeze:
        gc.collect()
        gc.freeze()  # as ``observatory serve`` does before serving
    messages: asyncio.Queue = asyncio.Queue()
    await messages.put({"type": "lifespan.startup"})

    async def lifespan_send(message):
        pass

    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                       messages.get, lifespan_send))
    await asyncio.sleep(0.2)
    out = [await drive(app, key, requests) for _ in range(rounds)]
    await messages.put({"type": "lifespan.shutdown"})
    await lifespan
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant (interleaved; median kept)")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--keys", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child, args.requests, 1, args.keys, args.key))))
        return

    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore

    work = Path(tempfile.mkdtemp(prefix="bench-breakdown-"))
    key, _ = ApiKeyStore(work / "keys.json").create("bench", ["inference"])
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant, (_, env, _) in VARIANTS.items():
            run_env = {**os.environ, **(env or {}), "OBSERVATORY_STATE_DIR": str(work / "state"),
                       "PYTHONPATH": str(REPO)}
            out = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--requests",
                 str(args.requests), "--keys", str(work / "keys.json"), "--key", key],
                capture_output=True, text=True, env=run_env, cwd=REPO,
            )
            if out.returncode:
                sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
            samples[variant].extend(json.loads(out.stdout.strip().splitlines()[-1]))
    cost = {variant: statistics.median(values) for variant, values in samples.items()}
    over = {"gateway": "bare", "+ metrics": "gateway", "+ traces": "+ metrics", "+ traces 10 %": "+ metrics",
            "+ traces, no gc.freeze": "+ traces"}
    print(f"{'variant':<24}{'us/request':>12}{'added':>10}{'ceiling':>10}")
    for variant, value in cost.items():
        added = f"{(value - cost[over[variant]]) * 1e6:+.0f}" if variant in over else ""
        print(f"{variant:<24}{value * 1e6:>12.0f}{added:>10}{cost['bare'] / value:>10.3f}")
    print(f"(CPU per request, every thread of the process; median of {args.rounds} x {args.requests} requests; "
          f"'added' is over the row above; the 10 % row's over '+ metrics', the last row's over '+ traces')")


if __name__ == "__main__":
    main()
