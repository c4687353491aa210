"""Balancing a replica pool with one slow replica: client p99 with least-outstanding (two random
choices), latency-weighted least-outstanding and round robin, one replica of four 10x
slower, against the same pool with four fast replicas, in one run on this machine.

Five replica processes (the project's test upstream, ``gpt_observatory/demo/upstream.py``):
four answer after ``--delay-ms`` (a replica's generation time; the sleep holds no CPU), one after
ten times that. Four gateway processes, all up for the whole run, each the full gateway (API-key
auth, rate limits, spans, metrics, GenAI hooks) in front of a :class:`ReplicaPool`:
``least_outstanding``, ``latency_weighted`` and ``round_robin`` over three fast replicas and the slow
one, and ``all_fast`` (least-outstanding over the four fast ones). A closed-loop client in this process
(aiohttp, ``--connections`` callers, each sending its next request when its answer is in) drives
each at the same concurrency, rounds interleaved so drift on the shared box hits all alike, and
records every request's latency. Not ``wrk``: wrk corrects its percentiles for coordinated
omission (each answer slower than the mean interval adds the samples a fixed-rate client would
have seen), which models one client stalled by its slow answer; here the callers are independent
and a request to the slow replica delays no other, so the correction would count each slow
answer about ten times. Reported: req/s, p50/p90/p99/p99.9 client latency (medians over rounds),
the share of requests the slow replica answered (from the gateway's own
``observatory.fleet.replica.requests``), and p99 over the all-fast p99 (goal: <= 1.5; round
robin's is the reference). The client, the gateways and the replicas share this machine's cores:
read the ratios.

Run from the repository root: ``.venv/bin/python bench/fleet.py [--duration 5] [--rounds 3]
[--connections 8] [--delay-ms 20]``; ``bench/fleet.py --workers [N ...]`` runs ``bench/workers.py``
(proxy throughput with ``serve --workers N`` vs 1) instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gateway import CHAT, free_port, process  # noqa: E402  (bench/gateway.py)

MODES = ("all_fast", "least_outstanding", "latency_weighted", "round_robin")
PROXY_CHAT = {**CHAT, "model": "up-model"}


def pool_app(mode: str, keys: str, replicas: list[str]):
    """The full gateway in front of a replica pool over ``replicas``, balanced as ``mode`` says."""
    from gpt_observatory import telemetry
    from gpt_observatory.serving_hooks.app import create_app, served_models
    from gpt_observatory.serving_hooks.backends.base import ModelRouter
    from gpt_observatory.serving_hooks.backends.pool import PoolPolicy, ReplicaPool, ReplicaSpec
    from gpt_observatory.serving_hooks.inference import GenAIHooks
    from gpt_observatory.serving_hooks.settings import load

    telemetry.configure("bench-fleet", gpu_enabled=False, console_logs=False, metrics_exporter=["prometheus"],
                        prometheus_serve=False)
    settings = load(backend="upstream", upstream_url=replicas[0], upstream_models=["up-model"], api_keys_file=keys,
                    requests_per_minute=10**9, tokens_per_minute=10**12)
    hooks = GenAIHooks("client", models=served_models(settings))
    balancer = "least_outstanding" if mode == "all_fast" else mode
    specs = [ReplicaSpec(url, f"replica-{i}") for i, url in enumerate(replicas)]
    pool = ReplicaPool(hooks, "up-model", specs, PoolPolicy(balancer=balancer))
    return create_app(settings, router=ModelRouter({"champion": pool}))


async def _drive(url: str, key: str, connections: int, duration: float) -> dict[str, float]:
    """``connections`` closed-loop callers for ``duration`` s: req/s and latency percentiles (ms) of
    every request; raises on any answer that is not a 200."""
    import aiohttp

    latencies: list[float] = []
    body = json.dumps(PROXY_CHAT).encode()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        stop = time.perf_counter() + duration

        async def caller() -> None:
            while (start := time.perf_counter()) < stop:
                async with session.post(url, data=body) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url} answered {r.status}")
                latencies.append(time.perf_counter() - start)

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()

    def at(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return {"rps": len(latencies) / elapsed, "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99),
            "p999_ms": at(0.999), "requests": len(latencies)}


def drive(url: str, key: str, connections: int, duration: float) -> dict[str, float]:
    return asyncio.run(_drive(url, key, connections, duration))


def slow_share(base: str, slow: str) -> float:
    """Share of the attempts the replica named ``slow`` answered, from the gateway's /metrics."""
    from gpt_observatory.telemetry import names

    series = names.FLEET_REPLICA_REQUESTS.prometheus + "_total{"
    total = mine = 0.0
    for line in urllib.request.urlopen(base + "/metrics", timeout=10).read().decode().splitlines():
        if line.startswith(series):
            value = float(line.rsplit(" ", 1)[1])
            total += value
            mine += value if f'{names.FLEET_REPLICA.replace(".", "_")}="{slow}"' in line else 0.0
    return mine / total if total else 0.0


def run(work: Path, duration: float, rounds: int, connections: int, delay_ms: float) -> dict:
    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore

    key, _ = ApiKeyStore(work / "keys.json").create("bench", ["inference"])
    env = {"OBSERVATORY_STATE_DIR": str(work / "state"), "PYTHONPATH": str(REPO)}
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        for name, delay in (("fast0", delay_ms), ("fast1", delay_ms), ("fast2", delay_ms), ("fast3", delay_ms),
                            ("slow", 10 * delay_ms)):
            port = free_port()
            cmd = [sys.executable, "-m", "gpt_observatory.demo.upstream", "--port", str(port),
                   "--delay-ms", str(delay)]
            stack.enter_context(process(cmd, f"http://127.0.0.1:{port}/v1/models", env))
            urls[name] = f"http://127.0.0.1:{port}/v1"
        one_slow = ",".join([urls["fast0"], urls["fast1"], urls["fast2"], urls["slow"]])
        fast = ",".join(urls[f"fast{i}"] for i in range(4))
        bases = {}
        for mode in MODES:
            port = free_port()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", mode, "--port", str(port),
                   "--keys", str(work / "keys.json"), "--replicas", fast if mode == "all_fast" else one_slow]
            stack.enter_context(process(cmd, f"http://127.0.0.1:{port}/healthz", env))
            bases[mode] = f"http://127.0.0.1:{port}"
        for mode in MODES:
            drive(bases[mode] + "/v1/chat/completions", key, connections, 1)  # warm-up
        for i in range(rounds):
            for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                runs[mode].append(drive(bases[mode] + "/v1/chat/completions", key, connections, duration))
        shares = {m: slow_share(bases[m], "replica-3") for m in MODES if m != "all_fast"}
    median = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    base = median["all_fast"]["p99_ms"]
    return {
        "connections": connections, "delay_ms": delay_ms, "slow_delay_ms": 10 * delay_ms, "rounds": rounds,
        "duration_s": duration, "median": median, "runs": runs, "slow_share": shares,
        "p99_ratio": {m: median[m]["p99_ms"] / base for m in MODES},
    }


def main() -> None:
    args = sys.argv[1:]
    if "--workers" in args:  # the all-cores figure (--workers [N ...], default 2 vs 1): bench/workers.py
        import workers

        at = args.index("--workers")
        if at + 1 == len(args) or not args[at + 1].isdigit():
            del args[at]  # bare --workers: bench/workers.py's default counts
        sys.argv = [str(Path(workers.__file__)), *args]
        workers.main()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per mode (medians reported)")
    parser.add_argument("--connections", type=int, default=8, help="closed-loop callers (the same load on each)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="a fast replica's time per request")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--keys", help=argparse.SUPPRESS)
    parser.add_argument("--replicas", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvicorn

        uvicorn.run(pool_app(args.serve, args.keys, args.replicas.split(",")), host="127.0.0.1", port=args.port,
                    log_level="warning", access_log=False, log_config=None)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    out = {"cpus": os.cpu_count(), **run(work, args.duration, args.rounds, args.connections, args.delay_ms)}
    print(f"replica pool, 4 replicas at {args.delay_ms:g} ms (one at {10 * args.delay_ms:g} ms but in all_fast), "
          f"{args.connections} closed-loop callers, {args.rounds} interleaved rounds of {args.duration:g} s, medians, "
          f"{out['cpus']} CPUs shared by the client, 4 gateways and 5 replicas:")
    print(f"{'':>18} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'slow share':>11} "
          f"{'p99/all-fast':>13}")
    for mode in MODES:
        m = out["median"][mode]
        share = out["slow_share"].get(mode)
        print(f"{mode:>18} {m['rps']:>8.1f} {m['p50_ms']:>8.2f} {m['p90_ms']:>8.2f} {m['p99_ms']:>8.2f} "
              f"{m['p999_ms']:>9.2f} {'-' if share is None else f'{100 * share:.2f} %':>11} "
              f"{out['p99_ratio'][mode]:>13.2f}")
    ratio = out["p99_ratio"]
    print(f"p99 / all-fast p99: least-outstanding {ratio['least_outstanding']:.2f}, latency-weighted {ratio['latency_weighted']:.2f} "
          f"(goal <= 1.5); round robin {ratio['round_robin']:.2f} (the reference)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
