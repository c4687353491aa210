"""What each GenAI naming costs per generation, side by side in one run: the 0.66b0 names we emit by
default, the pinned current conventions (``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental``)
and both (``gen_ai_latest_experimental/dup``), for one client (proxy) generation: its span, its
duration, TTFT and per-chunk records and its token usage, on the embedded defaults (jsonl files,
batch export). Rounds alternate the three so machine noise hits them alike.

Run from the repository root: ``.venv/bin/python bench/genai_names.py [--generations 2000] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from gpt_observatory import telemetry
from gpt_observatory.serving_hooks.inference import GenAIHooks, GenAIRequest, GenerationStats

MODES = {"0.66b0 (default)": "", "current": "gen_ai_latest_experimental", "both (/dup)": "gen_ai_latest_experimental/dup"}


def per_generation_us(hooks: GenAIHooks, generations: int) -> float:
    request = GenAIRequest("chat", "up-model", 16, 0.7, stream=True)
    start = time.perf_counter()
    for _ in range(generations):
        with hooks.generation(request) as gen:
            for _ in range(4):
                gen.token()
            gen.record(GenerationStats(7, 4, ("stop",), "id-1", "up-model"))
    return (time.perf_counter() - start) / generations * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("OBSERVATORY_STATE_DIR", tempfile.mkdtemp(prefix="bench-genai-"))
    telemetry.configure("bench-genai", gpu_enabled=False, console_logs=False)
    hooks = {label: GenAIHooks("client", provider="openai", server_address="127.0.0.1", server_port=8001,
                               semconv_opt_in=value) for label, value in MODES.items()}
    for h in hooks.values():  # warm-up: instruments and series exist before timing
        per_generation_us(h, 200)
    runs: dict[str, list[float]] = {label: [] for label in MODES}
    for _ in range(args.rounds):
        for label, h in hooks.items():
            runs[label].append(per_generation_us(h, args.generations))
    base = statistics.median(runs["0.66b0 (default)"])
    for label, values in runs.items():
        median = statistics.median(values)
        print(f"{label:>18}: {median:7.1f} us per generation (median of {args.rounds}; best {min(values):.1f}), "
              f"x{median / base:.2f} of the default", flush=True)
    telemetry.shutdown()


if __name__ == "__main__":
    main()
