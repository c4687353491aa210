"""Canary costs and reaction time, measured in one run on this machine.

1. Routing cost per request: the full gateway (API-key auth, rate limits, spans, metrics, GenAI
   hooks) serving a no-op model in process through the single-champion router vs the canary
   router (champion and challenger loaded, 10% share; per-request draw and sticky sessions), with
   ``wrk`` at concurrency 16, runs interleaved. Target: the canary costs <= 5% of throughput. Also
   the router's ``select()`` alone, in nanoseconds.
2. Reaction time: real MLflow server, real Prometheus (1 s scrape), a real ``observatory serve``
   process (0.5 s alias polls) under load, the Prefect ``canary`` flow promoting a good challenger
   and guarding it; then the new champion degrades (0.8 s slower per request). Measured: breach
   start -> rollback recorded in the registry -> the gateway serving the previous champion again,
   for each guard window given.

Run from the repository root: ``.venv/bin/python bench/canary.py [--duration 3] [--rounds 8]
[--windows 5,20]``. Every process shares this machine's cores: read section 1 as a ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gateway import CHAT, NoopModel, free_port, lua, process, wrk  # noqa: E402  (bench/gateway.py)


# ------------------------------------------------------------------ 1. routing cost
def canary_app(mode: str, keys: str):
    """The full gateway with a no-op model; ``mode``: single | canary | sticky."""
    from gpt_observatory import telemetry
    from gpt_observatory.serving_hooks.app import build_hooks, create_app
    from gpt_observatory.serving_hooks.backends.base import ModelRouter
    from gpt_observatory.serving_hooks.backends.canary import CanaryPolicy, CanaryRouter
    from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
    from gpt_observatory.serving_hooks.inference import ModelInfo
    from gpt_observatory.serving_hooks.settings import load

    telemetry.configure("bench-canary", gpu_enabled=False, console_logs=False)
    settings = load(api_keys_file=keys, requests_per_minute=10**9, tokens_per_minute=10**12)
    hooks = build_hooks(settings)
    champion = InProcessBackend(hooks, "tiny-gpt", model=NoopModel(0.0), info=ModelInfo("tiny-gpt", "1", "champion",
                                                                                         "champion"))
    if mode == "single":
        return create_app(settings, router=ModelRouter({"champion": champion}))
    challenger = InProcessBackend(hooks, "tiny-gpt", model=NoopModel(0.0), role="challenger",
                                  info=ModelInfo("tiny-gpt", "2", "challenger", "challenger"))
    policy = CanaryPolicy.of(0.1, sticky="session" if mode == "sticky" else "none")
    return create_app(settings, router=CanaryRouter(champion, challenger, policy))


def select_ns() -> dict[str, float]:
    """Nanoseconds per ``select()``: single router vs canary router (draw, sticky session)."""
    from gpt_observatory.serving_hooks._openai import ChatCompletionRequest
    from gpt_observatory.serving_hooks.backends.base import Call, ModelRouter
    from gpt_observatory.serving_hooks.backends.canary import CanaryPolicy, CanaryRouter
    from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
    from gpt_observatory.serving_hooks.context import RequestContext
    from gpt_observatory.serving_hooks.inference import GenAIHooks, ModelInfo

    hooks = GenAIHooks("server")
    a = InProcessBackend(hooks, "m", model=NoopModel(0), info=ModelInfo("m", "1", "champion", "champion"))
    b = InProcessBackend(hooks, "m", model=NoopModel(0), info=ModelInfo("m", "2", "challenger", "challenger"))
    call = Call("chat", ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], user="u-42"),
                b"", RequestContext(tenant="acme"))
    routers = {"single": ModelRouter({"champion": a}), "canary": CanaryRouter(a, b, CanaryPolicy.of(0.1)),
               "sticky": CanaryRouter(a, b, CanaryPolicy.of(0.1, sticky="session"))}
    n = 200_000
    return {k: min(timeit.repeat(lambda r=r: r.select(call), number=n, repeat=5)) / n * 1e9 for k, r in routers.items()}


def routing_cost(work: Path, duration: float, rounds: int) -> dict:
    """All three servers up at once (idle ones cost next to nothing); wrk rounds rotate among them."""
    import contextlib
    import statistics

    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore

    key, _ = ApiKeyStore(work / "keys.json").create("bench", ["inference"])
    env = {"OBSERVATORY_STATE_DIR": str(work / "state"), "PYTHONPATH": str(REPO)}
    script = lua({**CHAT, "user": "u-42"}, key, work)
    modes = ["single", "canary", "sticky"]
    runs: dict[str, list[float]] = {m: [] for m in modes}
    with contextlib.ExitStack() as stack:
        urls = {}
        for mode in modes:
            port = free_port()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", mode, "--port", str(port),
                   "--keys", str(work / "keys.json")]
            stack.enter_context(process(cmd, f"http://127.0.0.1:{port}/healthz", env))
            urls[mode] = f"http://127.0.0.1:{port}/v1/chat/completions"
        for mode in modes:
            wrk(urls[mode], script, 16, 1)  # warm-up
        for i in range(rounds):  # rotated order: drift on the shared box hits every mode alike
            for mode in modes[i % 3:] + modes[:i % 3]:
                runs[mode].append(wrk(urls[mode], script, 16, duration)["rps"])
    best = {m: max(r) for m, r in runs.items()}
    median = {m: statistics.median(r) for m, r in runs.items()}
    return {"rps_best": best, "rps_median": median, "runs": runs,
            "canary_ratio": best["canary"] / best["single"], "sticky_ratio": best["sticky"] / best["single"],
            "canary_ratio_median": median["canary"] / median["single"],
            "sticky_ratio_median": median["sticky"] / median["single"], "select_ns": select_ns()}


# ------------------------------------------------------------------ 2. breach -> rollback
def reaction(work: Path, windows: list[float]) -> list[dict]:
    from tests import components

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["OBSERVATORY_STATE_DIR"] = str(work / "state")
    out = []
    with components.mlflow_server(work / "mlflow") as mlflow_server:
        for window in windows:
            row = one_window(work, mlflow_server.url, window)
            out.append(row)
            print(f"guard window {window:g} s (step 1 s, scrape 1 s, alias poll 0.5 s): breach -> rollback recorded "
                  f"{row['breach_to_rollback_s']:.1f} s, -> gateway serving the previous champion "
                  f"{row['breach_to_serving_previous_s']:.1f} s ({row['failed_requests']} of {row['requests']} "
                  f"requests failed)", flush=True)
    return out


def one_window(work: Path, uri: str, window: float) -> dict:
    """Promote a good v2 through the canary flow, guard it with ``window``, degrade it, time the rollback."""
    from gpt_observatory.flows.canary import canary
    from gpt_observatory.flows.registry import CHAMPION, Registry
    from gpt_observatory.flows.stores import client_for
    from tests import components
    from tests.flows.canary_support import Load, bootstrap_champion, gateway, register, serving

    model = f"bench-canary-{int(window)}s-{os.getpid()}"
    fault = work / f"degrade-{int(window)}"
    v1 = register(uri, model, label="v1", delay_s=0.005)
    bootstrap_champion(uri, model, v1)
    v2 = register(uri, model, label="v2", delay_s=0.005, fault_file=str(fault), fault_delay_s=0.8)
    live = {"step_s": 1.0, "min_requests": 20, "max_p95_duration_s": 0.5, "max_p95_ttft_s": 0.5,
            "max_p95_duration_regression": 1.0, "max_p95_ttft_regression": 1.0, "latency_tolerance_s": 0.1,
            "guard_duration_s": window + 60, "guard_window_s": window, "guard_min_requests": 8}
    registry = Registry(client_for(uri), model)
    result: dict = {}
    with gateway(work, model, uri, "--canary-share", "0.5") as gw, \
            components.prometheus(work / f"prom-{int(window)}", [gw.removeprefix("http://")]) as prom:
        components.wait_for(lambda: serving(gw, v1, None), 90, what="the gateway to serve v1")
        load = Load([gw], model, threads=4, pause_s=0.02).start()

        def run() -> None:
            result["out"] = canary(model_name=model, version=v2, prometheus_url=prom.url, window_s=5,
                                   canary_settings=live,
                                   overrides={"tracking_uri": uri, "lease_settle_s": 0.1, "progress": False})

        flow = threading.Thread(target=run)
        flow.start()
        components.wait_for(lambda: registry.alias(CHAMPION) == v2, 120, interval=0.2, what="promotion")
        components.wait_for(lambda: serving(gw, v2, None), 30, interval=0.1, what="gateway on v2")
        time.sleep(min(window, 10) + 2)  # healthy traffic on v2 first
        fault.touch()
        breach = time.monotonic()
        components.wait_for(lambda: registry.alias(CHAMPION) == v1, 180, interval=0.1, what="rollback")
        recorded = time.monotonic()
        components.wait_for(lambda: serving(gw, v1, None), 30, interval=0.05, what="gateway back on v1")
        served = time.monotonic()
        flow.join(120)
        load.stop()
    guarded = result["out"].guard if result.get("out") else None
    return {"guard_window_s": window, "step_s": 1.0, "scrape_s": 1.0, "poll_s": 0.5,
            "breach_to_rollback_s": recorded - breach, "breach_to_serving_previous_s": served - breach,
            "decision": guarded.decision.reason if guarded and guarded.decision else None,
            "failed_requests": sum(1 for a in load.answers if not a.ok), "requests": len(load.answers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved wrk runs per router")
    parser.add_argument("--windows", default="5,20", help="guard windows (s) to time the rollback with")
    parser.add_argument("--skip", choices=["routing", "reaction"], help="leave one section out")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve", choices=["single", "canary", "sticky"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--keys", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvicorn

        uvicorn.run(canary_app(args.serve, args.keys), host="127.0.0.1", port=args.port, log_level="warning",
                    access_log=False, log_config=None)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-canary-"))
    results: dict = {"cpus": os.cpu_count()}
    if args.skip != "routing":
        r = results["routing"] = routing_cost(work, args.duration, args.rounds)
        ns = r["select_ns"]
        b, m = r["rps_best"], r["rps_median"]
        print(f"routing, no-op model, every hook on, c=16, best of {args.rounds}: single champion {b['single']:.0f} "
              f"req/s, canary 10% {b['canary']:.0f} (ratio {r['canary_ratio']:.3f}), sticky sessions "
              f"{b['sticky']:.0f} (ratio {r['sticky_ratio']:.3f}); medians {m['single']:.0f} / {m['canary']:.0f} / "
              f"{m['sticky']:.0f} (ratios {r['canary_ratio_median']:.3f} / {r['sticky_ratio_median']:.3f}); "
              f"target >= 0.95", flush=True)
        print(f"select(): single {ns['single']:.0f} ns, canary {ns['canary']:.0f} ns, sticky {ns['sticky']:.0f} ns",
              flush=True)
    if args.skip != "reaction":
        results["reaction"] = reaction(work, [float(w) for w in args.windows.split(",")])
    print(f"({os.cpu_count()} CPUs shared by wrk, the servers and other work on the machine)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
