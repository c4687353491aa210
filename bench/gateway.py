"""Gateway overhead, measured side by side in one run with ``wrk`` (Debian) and real uvicorn processes.

1. Hooks on vs off, model in process (``/v1/chat/completions``, not streamed): the full gateway
   (API-key auth, rate limits, spans, metrics, logs to the embedded jsonl backends, GenAI hooks)
   against the same FastAPI app with no gateway and no telemetry SDK. Targets: >= 0.8 with a no-op
   model, >= 0.97 with a 5 ms model.
2. Proxy mode in front of a fixed local upstream (``tests/serving_hooks/upstream_peer.py``), every
   hook on, against calling the upstream directly: added p50 latency at concurrency 1 (target
   <= 0.9 ms) and req/s at concurrency 16 (target >= 1,200).
3. The HTTP client for the upstream backend, chosen by measurement: a bare pure-ASGI proxy with
   aiohttp vs with httpx against the same upstream.
4. Tokens/s of the reference model (``flows``' TinyGPT, random weights) with the GenAI hooks around
   each generation vs without (on CUDA when present: the issue's GPU figure, target >= 0.99).

Run from the repository root: ``.venv/bin/python bench/gateway.py [--duration 5] [--rounds 2]``.
Every process (servers, upstream, wrk) shares this machine's cores: read the figures as ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHAT = {"model": "tiny-gpt", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 1}
PROXY_CHAT = {**CHAT, "model": "up-model"}


# ------------------------------------------------------------------ servers (this script, child mode)
class NoopModel:
    """The reference pyfunc interface with nothing behind it but an optional sleep."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def predict(self, rows):
        if self.delay_s:
            time.sleep(self.delay_s)
        return [{"text": "x", "prompt_tokens": len(r["prompt"]), "completion_tokens": 1, "finish_reason": "stop"}
                for r in rows]

    def predict_stream(self, row):
        if self.delay_s:
            time.sleep(self.delay_s)
        yield {"text": "x"}
        yield {"text": "", "finish_reason": "stop", "prompt_tokens": len(row["prompt"]), "completion_tokens": 1}


def inprocess_app(delay_ms: float, hooks: bool, keys: str | None, sdk: bool | None = None):
    """The in-process app; ``hooks`` turns the gateway on, ``sdk`` the telemetry SDK (default: with the hooks)."""
    from gpt_observatory import telemetry
    from gpt_observatory.serving_hooks.app import build_hooks, create_app
    from gpt_observatory.serving_hooks.backends.base import ModelRouter
    from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
    from gpt_observatory.serving_hooks.inference import ModelInfo
    from gpt_observatory.serving_hooks.settings import load

    if sdk is None:
        sdk = hooks
    if sdk:
        telemetry.configure("bench-gateway", gpu_enabled=False, console_logs=False)
    if hooks:
        settings = load(api_keys_file=keys, requests_per_minute=10**9, tokens_per_minute=10**12)
    else:
        settings = load(allow_anonymous=True)
    backend = InProcessBackend(build_hooks(settings), "tiny-gpt", model=NoopModel(delay_ms / 1000),
                               info=ModelInfo("tiny-gpt", "1", "champion", "champion"))
    router = ModelRouter({"champion": backend})
    if hooks:
        return create_app(settings, router=router)
    return create_app(settings, router=router, authenticator=None, instrument=False)


def bare_proxy_app(client: str, upstream: str):
    """A proxy with nothing but the HTTP client: POST body in, upstream answer out."""
    state: dict = {}
    url = upstream.rstrip("/") + "/chat/completions"

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    if client == "aiohttp":
                        import aiohttp

                        state["c"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
                    else:
                        import httpx

                        state["c"] = httpx.AsyncClient(limits=httpx.Limits(max_connections=256))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await (state["c"].close() if client == "aiohttp" else state["c"].aclose())
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["method"] == "GET":  # health probe
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {"content-type": "application/json"}
        if client == "aiohttp":
            async with state["c"].post(url, data=body, headers=headers) as r:
                status, data = r.status, await r.read()
        else:
            r = await state["c"].post(url, content=body, headers=headers)
            status, data = r.status_code, r.content
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})

    return app


def model_tokens_per_second(rounds: int, generations: int = 10, max_tokens: int = 64) -> dict:
    """Tokens/s of the reference model's ``predict_stream`` bare vs inside the GenAI hooks (token()
    per token, stats at the end, spans and metrics exported), interleaved; CUDA when present."""
    import torch

    from gpt_observatory import telemetry
    from gpt_observatory.flows.model import gpt, pyfunc
    from gpt_observatory.serving_hooks.inference import GenAIHooks, GenAIRequest, GenerationStats, ModelInfo

    telemetry.configure("bench-model", gpu_enabled=False, console_logs=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1)  # the model is tiny; more threads only fight the other processes here
    model = pyfunc.load_model(gpt.TinyGPT(gpt.GPTConfig()).to(device))
    row = {"prompt": "To be, or not to be", "max_tokens": max_tokens, "temperature": 0.8}
    hooks = GenAIHooks("server")
    info = ModelInfo("tiny-gpt", "1", "champion", "champion")

    def bare() -> int:
        return sum(1 for item in model.predict_stream(None, row) if item.get("finish_reason") is None)

    def hooked() -> int:
        request = GenAIRequest("text_completion", "tiny-gpt", max_tokens, 0.8, stream=True)
        with hooks.generation(request, info) as gen:
            for item in model.predict_stream(None, row):
                if item.get("finish_reason") is None:
                    gen.token()
                else:
                    gen.record(GenerationStats(item["prompt_tokens"], item["completion_tokens"], (item["finish_reason"],)))
            return gen.tokens

    rates: dict[str, list[float]] = {"bare": [], "hooked": []}
    bare()  # warm-up (CUDA context, kernels)
    for _ in range(rounds * 3):
        for name, fn in (("bare", bare), ("hooked", hooked)):
            start, tokens = time.perf_counter(), 0
            for _ in range(generations):
                tokens += fn()
            rates[name].append(tokens / (time.perf_counter() - start))
    telemetry.shutdown()
    bare_best, hooked_best = max(rates["bare"]), max(rates["hooked"])
    return {"device": device, "bare_tokens_s": bare_best, "hooked_tokens_s": hooked_best,
            "ratio": hooked_best / bare_best}


def serve_child(args: argparse.Namespace) -> None:
    import uvicorn

    if args.serve == "inprocess":
        app = inprocess_app(args.delay_ms, args.hooks == "on", args.keys)
    else:
        app = bare_proxy_app(args.client, args.upstream)
    gc.collect()
    gc.freeze()  # as ``observatory serve`` does before serving (both sides alike)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, log_config=None)


# ------------------------------------------------------------------ driver
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def process(cmd: list[str], health: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> Iterator[int]:
    """Run ``cmd`` until the block ends, once ``health`` answers; yields its pid."""
    log = tempfile.NamedTemporaryFile("w+b", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(health, timeout=2):
                    break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd} did not start:\n{Path(log.name).read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.unlink(log.name)


def lua(body: dict, key: str | None, folder: Path) -> Path:
    path = folder / f"post-{abs(hash((json.dumps(body), key)))}.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(body))}",
             'wrk.headers["Content-Type"] = "application/json"']
    if key:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {key}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk(url: str, script: Path, connections: int, duration: float) -> dict[str, float]:
    """req/s and p50/p90/p99 latency (ms) of ``duration`` seconds of load; raises on any non-2xx answer."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failures against {url}:\n{out}")
    row = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for q in (50, 90, 99):
        value, unit = re.search(rf"{q}%\s+([\d.]+)(us|ms|s)", out).groups()
        row[f"p{q}_ms"] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return row


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    """Best of the rounds (highest req/s, lowest p50): the least disturbed by other work on the box."""
    return {"rps": max(r["rps"] for r in runs), "p50_ms": min(r["p50_ms"] for r in runs)}


def measure(url: str, script: Path, connections: int, duration: float, rounds: int) -> dict[str, float]:
    wrk(url, script, connections, 1)  # warm-up
    return best([wrk(url, script, connections, duration) for _ in range(rounds)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per figure (best is kept)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve", choices=["inprocess", "bare-proxy"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--delay-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--hooks", choices=["on", "off"], default="on", help=argparse.SUPPRESS)
    parser.add_argument("--keys", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=["aiohttp", "httpx"], help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_child(args)
        return
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian package 'wrk')")

    sys.path.insert(0, str(REPO))
    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore

    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    key, _ = ApiKeyStore(work / "keys.json").create("bench", ["inference"])
    env = {"OBSERVATORY_STATE_DIR": str(work / "state"), "PYTHONPATH": str(REPO)}
    me = [sys.executable, str(Path(__file__).resolve())]
    d, n = args.duration, args.rounds
    results: dict[str, dict] = {"cpus": os.cpu_count(), "duration_s": d, "rounds": n}

    # 1. hooks on vs off, model in process
    # ("on, 10% traced": a common production sampler; unsampled spans skip all attribute work)
    sampled = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    for delay in (0.0, 5.0):
        row: dict = {}
        for label, hooks, extra_env in (("off", "off", {}), ("on", "on", {}), ("on_sampled", "on", sampled)):
            port = free_port()
            cmd = [*me, "--serve", "inprocess", "--port", str(port), "--delay-ms", str(delay), "--hooks", hooks,
                   "--keys", str(work / "keys.json")]
            with process(cmd, f"http://127.0.0.1:{port}/healthz", {**env, **extra_env}):
                script = lua(CHAT, key if hooks == "on" else None, work)
                row[label] = measure(f"http://127.0.0.1:{port}/v1/chat/completions", script, 16, d, n)
        row["ratio"] = row["on"]["rps"] / row["off"]["rps"]
        row["ratio_sampled"] = row["on_sampled"]["rps"] / row["off"]["rps"]
        results[f"inprocess_{int(delay)}ms"] = row
        print(f"in-process model {delay:g} ms, c=16: hooks off {row['off']['rps']:.0f} req/s, "
              f"on {row['on']['rps']:.0f} req/s (ratio {row['ratio']:.3f}), on with 10% of traces "
              f"{row['on_sampled']['rps']:.0f} req/s (ratio {row['ratio_sampled']:.3f})", flush=True)

    # 2. proxy mode vs the upstream directly;  3. bare proxies per HTTP client
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    with process([sys.executable, "-m", "tests.serving_hooks.upstream_peer", "--port", str(up_port)],
                 f"{upstream}/models", env):
        direct_script = lua(PROXY_CHAT, None, work)
        direct = f"{upstream}/chat/completions"
        results["direct_c1"] = measure(direct, direct_script, 1, d, n)
        results["direct_c16"] = measure(direct, direct_script, 16, d, n)
        port = free_port()
        cmd = [sys.executable, "-m", "gpt_observatory.commands.serve", "--backend", "upstream", "--upstream-url",
               upstream, "--model", "up-model", "--port", str(port), "--api-keys-file", str(work / "keys.json"),
               "--requests-per-minute", str(10**9), "--tokens-per-minute", str(10**12)]
        with process(cmd, f"http://127.0.0.1:{port}/healthz", env):
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            script = lua(PROXY_CHAT, key, work)
            results["gateway_c1"] = measure(url, script, 1, d, n)
            results["gateway_c16"] = measure(url, script, 16, d, n)
        for client in ("aiohttp", "httpx"):
            port = free_port()
            cmd = [*me, "--serve", "bare-proxy", "--port", str(port), "--client", client, "--upstream", upstream]
            with process(cmd, f"http://127.0.0.1:{port}/healthz", env):
                results[f"bare_{client}_c16"] = measure(f"http://127.0.0.1:{port}/", direct_script, 16, d, n)
                if client == "aiohttp":
                    results["bare_aiohttp_c1"] = measure(f"http://127.0.0.1:{port}/", direct_script, 1, d, n)

    # 4. the reference model's tokens/s with and without the GenAI hooks (the GPU figure on a GPU box)
    os.environ["OBSERVATORY_STATE_DIR"] = str(work / "state-model")
    results["model"] = model = model_tokens_per_second(n)
    print(f"reference model on {model['device']}: {model['bare_tokens_s']:.0f} tokens/s bare, "
          f"{model['hooked_tokens_s']:.0f} with hooks, ratio {model['ratio']:.3f} (target on GPU >= 0.99)", flush=True)

    added = results["gateway_c1"]["p50_ms"] - results["direct_c1"]["p50_ms"]
    results["proxy_added_p50_ms"] = added
    print(f"proxy, every hook on: p50 at c=1 {results['gateway_c1']['p50_ms']:.3f} ms vs direct "
          f"{results['direct_c1']['p50_ms']:.3f} ms: added {added:.3f} ms (target <= 0.9)")
    print(f"proxy, every hook on: {results['gateway_c16']['rps']:.0f} req/s at c=16 "
          f"(direct {results['direct_c16']['rps']:.0f}; target >= 1200)")
    print(f"bare proxy at c=16: aiohttp {results['bare_aiohttp_c16']['rps']:.0f} req/s, "
          f"httpx {results['bare_httpx_c16']['rps']:.0f} req/s")
    # The targets are absolute, set on a machine where the bare aiohttp proxy did 3,650 req/s
    # (STYLE.md). Scaled by what the same bare proxy does here, in this run:
    bare = results["bare_aiohttp_c16"]["rps"]
    results["proxy_vs_bare_aiohttp"] = share = results["gateway_c16"]["rps"] / bare
    bare_added = results["bare_aiohttp_c1"]["p50_ms"] - results["direct_c1"]["p50_ms"]
    print(f"machine-scaled: the full gateway does {share:.3f} of the bare aiohttp proxy's req/s at c=16 "
          f"({results['gateway_c16']['rps']:.0f} vs {bare:.0f}); the target implies {1200 / 3650:.3f} "
          f"(1,200 of 3,650 req/s); the bare proxy itself adds {bare_added:.3f} ms p50 at c=1")
    print(f"({os.cpu_count()} CPUs shared by wrk, the upstream and the gateway; best of {n} x {d:g} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
