"""The usage ledger's figures (issue 17, Deliver 4 and Must show):

1. Rows/s shipped to PostgreSQL: a spool of ``--rows`` rows moved to the store in batches of
   ``--batch`` (goal >= 5,000 rows/s), and end to end (submitted on the request path -> in PostgreSQL).
2. The request path's cost: proxy req/s and p50 through the full gateway in front of the fixed local
   upstream, ledger on vs off, interleaved rounds with ``wrk`` at concurrency 16 (goal <= 3 %), and
   the CPU time per request of the gateway process with its shipper child (a figure the other load on a
   shared 2-core box disturbs far less than req/s: at saturation req/s goes as 1 / CPU per request).
3. Exactness: ``--requests`` requests (plain, streamed with usage, streamed without, cut, failed,
   left mid-stream) through the gateway with the ledger on: the ledger's totals against the sum of
   the ``usage`` the caller saw (per request where it was shown) and the gateway's metered tokens.

Run from the repository root: ``.venv/bin/python bench/ledger.py [--pg-url URL] [--rounds 3]``.
Without ``--pg-url`` a database ``observatory_ledger_bench`` is made on the local PostgreSQL (5432).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gateway import PROXY_CHAT, free_port, lua, process, wrk  # noqa: E402  (bench/gateway.py)

MODELS = "up-model,fail-500,cut,stall"


def serve_child(port: int, ledger: bool) -> None:
    import gc

    import uvicorn

    from gpt_observatory import telemetry
    from gpt_observatory.serving_hooks.app import create_app
    from gpt_observatory.serving_hooks.ledger import LedgerMiddleware, open_ledger
    from gpt_observatory.serving_hooks.settings import load

    telemetry.configure("ledger-bench")
    settings = load(ledger_enabled=False)  # the app without one; "on" wraps it in a started ledger
    app = create_app(settings)
    if ledger:
        led = open_ledger(settings.model_copy(update={"ledger_enabled": True}))
        led.start()
        app = LedgerMiddleware(app, led)
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, log_config=None)


def pg_url(given: str | None) -> str:
    if given:
        return given
    name = "observatory_ledger_bench"
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-c"]
    subprocess.run([*psql, f"DROP DATABASE IF EXISTS {name}"], check=True, capture_output=True)
    subprocess.run([*psql, f"CREATE DATABASE {name}"], check=True, capture_output=True)
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def shipping(url: str, rows: int, batch: int, folder: Path) -> dict[str, float]:
    from gpt_observatory.serving_hooks.ledger import Ledger, UsageRow, open_store
    from gpt_observatory.serving_hooks.ledger._meters import Meters
    from gpt_observatory.serving_hooks.ledger._row import iso
    from gpt_observatory.serving_hooks.ledger._ship import Shipper
    from gpt_observatory.serving_hooks.ledger._spool import SpoolWriter, line

    now = time.time()
    made = [UsageRow(secrets.token_hex(16), iso(now + i * 1e-4), f"t{i % 50}", "/v1/chat/completions", "ok", 200,
                     100 + i % 900, i % 512, model="m", model_version="1", latency_s=0.01, ttft_s=0.002,
                     cost_micro=i, currency="USD", trace_id=secrets.token_hex(16)) for i in range(rows)]
    writer = SpoolWriter(folder / "ship")
    for i in range(0, rows, 5000):
        writer.append(b"".join(line(r, now) for r in made[i:i + 5000]), rows=len(made[i:i + 5000]))
    writer.close()  # finished: the shipper claims the segments as a restarted gateway's would
    shipper = Shipper(folder / "ship", open_store(url), Meters(), batch_rows=batch)
    start = time.perf_counter()
    shipped = shipper.ship_once()
    while shipped < rows:
        shipped += shipper.ship_once()
    ship_s = time.perf_counter() - start
    shipper.store.close()
    # End to end: submitted as the request path does, shipped by the threads.
    again = [UsageRow(secrets.token_hex(16), r.time, r.tenant, r.route, r.outcome, r.status, r.input_tokens,
                      r.output_tokens) for r in made]
    ledger = Ledger(folder / "e2e", url, batch_rows=batch, ship_interval_s=0.05)
    ledger.start()
    start = time.perf_counter()
    for r in again:
        ledger.submit(r)
    assert ledger.flush(300)
    e2e_s = time.perf_counter() - start
    ledger.close()
    return {"rows": rows, "batch": batch, "ship_rows_per_s": round(rows / ship_s),
            "end_to_end_rows_per_s": round(rows / e2e_s), "dropped": ledger.meters.dropped_total}


def request_path(env: dict[str, str], rounds: int, duration: float, key: str, folder: Path) -> dict:
    script = lua(PROXY_CHAT, key, folder)
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for r in range(rounds):
        for side in ("off", "on") if r % 2 == 0 else ("on", "off"):
            port = free_port()
            with process([sys.executable, __file__, "--serve", str(port), "--ledger", side],
                         f"http://127.0.0.1:{port}/healthz", env=env) as pid:
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                wrk(url, script, 16, 1)
                cpu = cpu_s(pid)
                run = wrk(url, script, 16, duration)
                run["cpu_us_per_request"] = round((cpu_s(pid) - cpu) / (run["rps"] * round(duration)) * 1e6, 1)
                runs[side].append(run)
    best = {s: {"rps": max(x["rps"] for x in v), "p50_ms": min(x["p50_ms"] for x in v),
                "cpu_us_per_request": statistics.median(x["cpu_us_per_request"] for x in v)}
            for s, v in runs.items()}
    return {**best, "rps_ratio_on_off": round(best["on"]["rps"] / best["off"]["rps"], 4),
            "cpu_ratio_on_off": round(best["on"]["cpu_us_per_request"] / best["off"]["cpu_us_per_request"], 4),
            "all_rounds": runs}


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` and its live descendants (the ledger's shipper) used."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += cpu_s(int(child))
    except (OSError, IndexError, ValueError):
        pass
    return total


async def _exactness_load(base: str, key: str, requests: int) -> dict:
    import httpx

    seen: dict[str, dict | None] = {}  # trace id -> the usage the caller saw (None: none shown)
    kinds = {"plain": 0, "stream_usage": 0, "stream": 0, "cut": 0, "failed": 0, "left": 0}
    sem = asyncio.Semaphore(16)

    async def one(i: int, http: httpx.AsyncClient) -> None:
        async with sem:
            kind = ("plain", "stream_usage", "stream", "cut", "failed", "left", "plain", "stream_usage")[i % 8]
            kinds[kind] += 1
            body: dict = {"model": "up-model", "max_tokens": 1 + i % 7, "messages": [{"role": "user", "content": "hi"}]}
            if kind in ("stream_usage", "stream", "cut", "left"):
                body["stream"] = True
            if kind in ("stream_usage", "cut"):
                body["stream_options"] = {"include_usage": True}
            body["model"] = {"cut": "cut", "failed": "fail-500", "left": "stall"}.get(kind, "up-model")
            tid = secrets.token_hex(16)
            seen[tid] = None
            headers = {"traceparent": f"00-{tid}-{secrets.token_hex(8)}-01"}
            async with http.stream("POST", "/chat/completions", json=body, headers=headers) as r:
                if kind == "left":
                    async for _ in r.aiter_raw():
                        break
                    return
                text = (await r.aread()).decode()
            usage = None
            if not body.get("stream") and r.status_code == 200:
                usage = json.loads(text).get("usage")
            for line in text.splitlines():
                if line.startswith("data: {"):
                    usage = json.loads(line[6:]).get("usage") or usage
            seen[tid] = usage

    async with httpx.AsyncClient(base_url=base, timeout=30, headers={"authorization": f"Bearer {key}"},
                                 limits=httpx.Limits(max_connections=32)) as http:
        await asyncio.gather(*(one(i, http) for i in range(requests)))
    return {"seen": seen, "kinds": kinds}


def exactness(env: dict[str, str], key: str, requests: int, folder: Path) -> dict:
    from gpt_observatory.serving_hooks.ledger._sqlite import SqliteStore

    store_path = folder / "exact.sqlite3"
    env = {**env, "OBSERVATORY_SERVE_LEDGER_URL": str(store_path),
           "OBSERVATORY_SERVE_LEDGER_SPOOL_DIR": str(folder / "exact-spool")}
    port = free_port()
    with process([sys.executable, __file__, "--serve", str(port), "--ledger", "on"],
                 f"http://127.0.0.1:{port}/healthz", env=env):
        out = asyncio.run(_exactness_load(f"http://127.0.0.1:{port}/v1", key, requests))
        time.sleep(2)  # the shipper's interval
    store = SqliteStore(store_path)
    ledger = {t: (i, o, outcome) for t, i, o, outcome in
              store.query("SELECT trace_id, input_tokens, output_tokens, outcome FROM usage", [])}
    store.close()
    shown = {t: u for t, u in out["seen"].items() if u}
    caller = {"requests": len(shown), "input": sum(u["prompt_tokens"] for u in shown.values()),
              "output": sum(u["completion_tokens"] for u in shown.values())}
    rows_of_shown = [ledger[t] for t in shown if t in ledger]
    in_ledger = {"requests": len(rows_of_shown), "input": sum(r[0] for r in rows_of_shown),
                 "output": sum(r[1] for r in rows_of_shown)}
    outcomes: dict[str, int] = {}
    for _, _, outcome in ledger.values():
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return {"requests": requests, "rows": len(ledger), "missing": len(set(out["seen"]) - set(ledger)),
            "outcomes": outcomes, "kinds": out["kinds"], "usage_shown_to_caller": caller,
            "ledger_for_those_requests": in_ledger, "exact": caller == in_ledger,
            "ledger_tokens_all_rows": {"input": sum(r[0] for r in ledger.values()),
                                       "output": sum(r[1] for r in ledger.values())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ledger", default="on", help=argparse.SUPPRESS)
    parser.add_argument("--pg-url", default=None)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: ship,path,exact")
    args = parser.parse_args()
    if args.serve:
        serve_child(args.serve, args.ledger == "on")
        return
    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore

    skip = set(filter(None, args.skip.split(",")))
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "ship" not in skip:
            result["shipping_to_postgresql"] = shipping(pg_url(args.pg_url), args.rows, args.batch, folder)
            print(json.dumps(result["shipping_to_postgresql"]), flush=True)
        keys = folder / "keys.json"
        key, _ = ApiKeyStore(keys).create("bench", ["inference"])
        up_port = free_port()
        with process([sys.executable, "-m", "gpt_observatory.demo.upstream", "--port", str(up_port)],
                     f"http://127.0.0.1:{up_port}/v1/models"):
            env = {"OBSERVATORY_SERVE_BACKEND": "upstream", "OBSERVATORY_SERVE_UPSTREAM_URL": f"http://127.0.0.1:{up_port}/v1",
                   "OBSERVATORY_SERVE_API_KEYS_FILE": str(keys), "OBSERVATORY_SERVE_UPSTREAM_MODELS": MODELS,
                   "OBSERVATORY_SERVE_UPSTREAM_TIMEOUT_S": "0.5", "OBSERVATORY_STATE_DIR": str(folder / "state"),
                   "OBSERVATORY_SERVE_LEDGER_URL": str(folder / "path.sqlite3")}
            if "path" not in skip:
                result["request_path"] = request_path(env, args.rounds, args.duration, key, folder)
                print(json.dumps({k: v for k, v in result["request_path"].items() if k != "all_rounds"}), flush=True)
            if "exact" not in skip:
                result["exactness"] = exactness(env, key, args.requests, folder)
                print(json.dumps(result["exactness"]), flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
