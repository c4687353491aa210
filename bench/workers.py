"""``observatory serve --workers N``: proxy throughput with N workers vs 1, in one run on this machine,
and what one rate-limit check costs on each store.

1. Throughput. The full gateway (API-key auth, RPM and TPM limits, spans, metrics, GenAI hooks) in
   front of the fixed local upstream (``tests/serving_hooks/upstream_peer.py``), as ``bench/gateway.py``'s
   proxy figure, once with ``--workers 1`` and once per ``--workers`` value given (rate limits then in the
   supervisor's host store, the default without Redis). All gateways stay up for the whole run and
   the rounds are interleaved, so drift on the shared box hits each alike; ``wrk`` drives them
   (``bench/gateway.py``'s driver) or, without ``wrk``, a closed-loop aiohttp client in this process
   (slower: it takes CPU from the gateway). Printed: best req/s of each, its ratio to 1 worker and
   the share of the machine's CPU left idle during the run, plus the upstream alone (no gateway: a
   ceiling) and the largest N with ``--rate-limit-store memory`` (one limiter per worker, not exact:
   what the host store costs in throughput).
   Every process (wrk, the upstream, the supervisor and its workers) shares this machine's cores:
   the ratio can only approach N when the machine has cores to spare beyond the load generator and
   the upstream.
2. Per-request cost of the rate-limit store: the mean time of ``RateLimiter.admit`` (RPM and TPM,
   so two counter updates) in memory, on the host store (a unix-socket round trip to a store in
   another process, as the workers use it) and on Redis when one answers on ``--redis-url``.

Run from the repository root: ``.venv/bin/python bench/workers.py [--workers 2] [--duration 5]
[--rounds 3] [--connections 32]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import uvloop

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gateway import PROXY_CHAT, free_port, lua, process, wrk  # noqa: E402  (bench/gateway.py)


def load(url: str, script: Path, connections: int, duration: float, key: str) -> dict[str, float]:
    """req/s of ``duration`` seconds of closed-loop load on ``connections`` connections."""
    if shutil.which("wrk"):
        return wrk(url, script, connections, duration)
    return asyncio.run(_aiohttp_load(url, connections, duration, key))


async def _aiohttp_load(url: str, connections: int, duration: float, key: str) -> dict[str, float]:
    import aiohttp

    done = 0
    deadline = time.monotonic() + duration
    headers = {"authorization": f"Bearer {key}"}

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            async with session.post(url, json=PROXY_CHAT, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url} answered {r.status}")
            done += 1

    start = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        await asyncio.gather(*(client(session) for _ in range(connections)))
    return {"rps": done / (time.monotonic() - start)}


def admit_cost(redis_url: str | None, calls: int = 5000) -> dict[str, float]:
    """Mean µs of one ``RateLimiter.admit`` (RPM and TPM) per store."""
    from gpt_observatory.serving_hooks import _hoststore
    from gpt_observatory.serving_hooks.ratelimit import RateLimiter

    folder = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    store = multiprocessing.get_context("spawn").Process(target=_serve_store, args=(folder / "s.sock",), daemon=True)
    store.start()
    while not (folder / "s.sock").exists():
        time.sleep(0.01)

    async def mean_us(**where: str | None) -> float:
        limiter = RateLimiter(requests_per_minute=10**9, tokens_per_minute=10**12, timeout_s=1,
                              namespace=f"bench-{os.getpid()}", **where)
        for _ in range(200):  # connect, warm up
            await limiter.admit("bench", 10)
        start = time.perf_counter()
        for _ in range(calls):
            await limiter.admit("bench", 10)
        elapsed = time.perf_counter() - start
        await limiter.close()
        return elapsed / calls * 1e6

    async def all_stores() -> dict[str, float]:
        costs = {"memory": await mean_us(), "host": await mean_us(store=_hoststore.uri(folder / "s.sock"))}
        if redis_url:
            with contextlib.suppress(Exception):
                import redis

                redis.Redis.from_url(redis_url, socket_timeout=0.5).ping()
                costs["redis"] = await mean_us(redis_url=redis_url)
        return costs

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as in a gateway worker
            return runner.run(all_stores())
    finally:
        store.terminate()
        shutil.rmtree(folder, ignore_errors=True)


def _serve_store(path: Path) -> None:
    from gpt_observatory.serving_hooks import _hoststore

    async def forever() -> None:
        await _hoststore.serve(path)
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as in the supervisor
        runner.run(forever())


def _cpu_times() -> list[int]:
    """The machine's CPU times (the ``cpu`` line of /proc/stat; empty where there is none)."""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return []


def _idle_share(before: list[int], after: list[int]) -> float:
    """Share of the machine's CPU time left idle between two readings (idle + iowait)."""
    if not before or not after:
        return float("nan")
    delta = [b - a for a, b in zip(before, after, strict=True)]
    return (delta[3] + delta[4]) / max(1, sum(delta))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="worker counts to compare with 1")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per figure (best is kept)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="for the store cost; '' skips it")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore

    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    key, _ = ApiKeyStore(work / "keys.json").create("bench", ["inference"])
    env = {"OBSERVATORY_STATE_DIR": str(work / "state"), "PYTHONPATH": str(REPO), "OBSERVATORY_GPU_ENABLED": "false"}
    # (label, workers, extra options): 1 worker, then each N on the host store, then the largest N with
    # one in-memory limiter per worker (not exact; shows what the host store costs in throughput).
    top = max(args.workers)
    setups = [("1", 1, []), *((str(n), n, []) for n in args.workers),
              (f"{top}-memory", top, ["--rate-limit-store", "memory"])]
    results: dict = {"cpus": os.cpu_count(), "duration_s": args.duration, "rounds": args.rounds,
                     "connections": args.connections, "driver": "wrk" if shutil.which("wrk") else "aiohttp"}
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    script = lua(PROXY_CHAT, key, work)
    direct_script = lua(PROXY_CHAT, None, work)
    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in [*setups, ("direct", 0, [])]}
    with contextlib.ExitStack() as stack:
        stack.enter_context(process([sys.executable, "-m", "tests.serving_hooks.upstream_peer", "--port", str(up_port)],
                                    f"{upstream}/models", env))
        urls = {"direct": f"{upstream}/chat/completions"}
        for label, n, extra in setups:
            port = free_port()
            cmd = [sys.executable, "-m", "gpt_observatory.commands.serve", "--workers", str(n), "--backend", "upstream",
                   "--upstream-url", upstream, "--model", "up-model", "--port", str(port),
                   "--api-keys-file", str(work / "keys.json"),
                   "--requests-per-minute", str(10**9), "--tokens-per-minute", str(10**12), *extra]
            stack.enter_context(process(cmd, f"http://127.0.0.1:{port}/healthz", env))
            urls[label] = f"http://127.0.0.1:{port}/v1/chat/completions"
        time.sleep(3 * top)  # every worker up (healthz answered as soon as the first one did)
        for label, url in urls.items():
            load(url, direct_script if label == "direct" else script, args.connections, 1, key)  # warm-up
        for _ in range(args.rounds):
            for label, url in urls.items():
                before = _cpu_times()
                row = load(url, direct_script if label == "direct" else script, args.connections, args.duration, key)
                row["idle"] = _idle_share(before, _cpu_times())
                runs[label].append(row)
    results["runs"] = runs
    results["rps"] = rps = {label: max(r["rps"] for r in rows) for label, rows in runs.items()}
    results["idle"] = {label: min(r["idle"] for r in rows) for label, rows in runs.items()}
    print(f"the upstream alone (no gateway): {rps['direct']:.0f} req/s", flush=True)
    for label, _, _ in setups:
        ratio = rps[label] / rps["1"]
        results.setdefault("ratio", {})[label] = ratio
        print(f"--workers {label}: {rps[label]:.0f} req/s" + ("" if label == "1" else f", {ratio:.2f}x of 1 worker")
              + f" (machine idle {results['idle'][label]:.0%})", flush=True)
    print(f"({os.cpu_count()} CPUs shared by {results['driver']}, the upstream and the gateway's workers; "
          f"c={args.connections}, best of {args.rounds} x {args.duration:g} s, interleaved)")

    results["admit_us"] = costs = admit_cost(args.redis_url or None)
    print("RateLimiter.admit (RPM + TPM), mean: " + ", ".join(f"{k} {v:.1f} µs" for k, v in costs.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
