"""Shadow traffic's cost to the caller: client-side latency with shadow on (share 1.0) vs off at the
same load, measured in one run on this machine.

Two gateway processes, both up for the whole run: the full gateway (API-key auth, rate limits,
spans, metrics, GenAI hooks) serving an in-process model that takes ``--delay-ms`` per request
(the sleep releases the GIL, as a GPU generation does); ``on`` also loads a challenger of the same
speed and mirrors every request to it (``ShadowRouter``, share 1.0). ``wrk`` drives each at the
same concurrency, runs interleaved so drift on the shared box hits both alike. Reported: req/s,
p50/p90/p99 client latency, and the ratios off/on (1.0: shadow costs the caller nothing; target
>= 0.97: the challenger runs beside, not in front), plus how many mirrors the challenger answered
and how many were dropped.

Run from the repository root: ``.venv/bin/python bench/shadow.py [--duration 3] [--rounds 6]
[--connections 4] [--delay-ms 20]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gateway import CHAT, NoopModel, free_port, lua, process, wrk  # noqa: E402  (bench/gateway.py)

MODES = ("off", "on")


def shadow_app(mode: str, keys: str, delay_ms: float):
    """The full gateway; ``mode`` ``on`` mirrors every request to a challenger as fast as the champion."""
    from gpt_observatory import telemetry
    from gpt_observatory.serving_hooks.app import build_hooks, create_app
    from gpt_observatory.serving_hooks.backends.base import ModelRouter
    from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
    from gpt_observatory.serving_hooks.backends.shadow import ShadowPolicy, ShadowRouter
    from gpt_observatory.serving_hooks.inference import ModelInfo
    from gpt_observatory.serving_hooks.settings import load

    telemetry.configure("bench-shadow", gpu_enabled=False, console_logs=False, metrics_exporter=["prometheus"],
                        prometheus_serve=False)
    settings = load(api_keys_file=keys, requests_per_minute=10**9, tokens_per_minute=10**12)
    hooks = build_hooks(settings)
    delay = delay_ms / 1000
    champion = InProcessBackend(hooks, "tiny-gpt", model=NoopModel(delay),
                                info=ModelInfo("tiny-gpt", "1", "champion", "champion"))
    if mode == "off":
        return create_app(settings, router=ModelRouter({"champion": champion}))
    challenger = InProcessBackend(hooks, "tiny-gpt", model=NoopModel(delay), role="challenger",
                                  info=ModelInfo("tiny-gpt", "2", "challenger", "challenger"))
    return create_app(settings, router=ShadowRouter(champion, challenger, ShadowPolicy.of(1.0, concurrency=8)))


def mirrors(base: str) -> dict[str, float]:
    """Mirrors the challenger answered and mirrors dropped, from the ``on`` gateway's /metrics."""
    from gpt_observatory.telemetry import names

    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    answered = names.SHADOW_REQUEST_DURATION.prometheus + "_count"
    dropped = names.SHADOW_DROPPED.prometheus + "_total"

    def total(series: str, needle: str = "") -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(series + "{") and needle in line)

    return {"answered": total(answered, 'observatory_model_role="challenger"'), "dropped": total(dropped)}


def run(work: Path, duration: float, rounds: int, connections: int, delay_ms: float) -> dict:
    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore

    key, _ = ApiKeyStore(work / "keys.json").create("bench", ["inference"])
    env = {"OBSERVATORY_STATE_DIR": str(work / "state"), "PYTHONPATH": str(REPO)}
    script = lua(CHAT, key, work)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with contextlib.ExitStack() as stack:
        bases = {}
        for mode in MODES:
            port = free_port()
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", mode, "--port", str(port),
                   "--keys", str(work / "keys.json"), "--delay-ms", str(delay_ms)]
            stack.enter_context(process(cmd, f"http://127.0.0.1:{port}/healthz", env))
            bases[mode] = f"http://127.0.0.1:{port}"
        urls = {m: b + "/v1/chat/completions" for m, b in bases.items()}
        for mode in MODES:
            wrk(urls[mode], script, connections, 1)  # warm-up
        for i in range(rounds):
            for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                runs[mode].append(wrk(urls[mode], script, connections, duration))
        shadowed = mirrors(bases["on"])
    median = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    return {
        "connections": connections, "delay_ms": delay_ms, "rounds": rounds, "duration_s": duration,
        "median": median, "runs": runs, "mirrors": shadowed,
        "latency_ratio_p50": median["off"]["p50_ms"] / median["on"]["p50_ms"],
        "latency_ratio_p99": median["off"]["p99_ms"] / median["on"]["p99_ms"],
        "throughput_ratio": median["on"]["rps"] / median["off"]["rps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved wrk runs per mode")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections (the same load on both)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="the model's time per request")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--keys", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvicorn

        uvicorn.run(shadow_app(args.serve, args.keys, args.delay_ms), host="127.0.0.1", port=args.port,
                    log_level="warning", access_log=False, log_config=None)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    out = {"cpus": os.cpu_count(), **run(work, args.duration, args.rounds, args.connections, args.delay_ms)}
    print(f"shadow off vs on (share 1.0), wrk -c{args.connections}, model {args.delay_ms:g} ms/request, "
          f"{args.rounds} interleaved rounds of {args.duration:g} s, medians, {out['cpus']} CPUs:")
    print(f"{'':>5} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for mode in MODES:
        m = out["median"][mode]
        print(f"{mode:>5} {m['rps']:>8.1f} {m['p50_ms']:>8.2f} {m['p90_ms']:>8.2f} {m['p99_ms']:>8.2f}")
    print(f"latency ratio off/on: p50 {out['latency_ratio_p50']:.3f}, p99 {out['latency_ratio_p99']:.3f} "
          f"(target >= 0.97); throughput on/off {out['throughput_ratio']:.3f}; mirrors answered by the challenger "
          f"{out['mirrors']['answered']:.0f}, dropped {out['mirrors']['dropped']:.0f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
