"""GPU energy per tenant (issue 17): J/token for two tenants with different prompt lengths, and the
joules attributed to their generations against the NVML energy counter's increase over the run.

The reference TinyGPT (random weights, context 1024, 8 layers of width 1024) serves in process behind
the real gateway and usage ledger; ``--requests`` per tenant go out from ``--clients`` concurrent
clients, half of them streamed (``tests/telemetry/energy_load.py``). J/token is each tenant's ledger
``gpu_joules`` over its output tokens. Target: attributed / NVML delta within 5 %. Without a GPU it says
so and exits 0; exit 1 when the target is missed. It also prints what a generation's two forced counter
reads (at its open and its close, in the worker thread) cost.

    python bench/energy.py [--requests 32] [--clients 4] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the load runner lives with the tests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32, help="requests per tenant")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    from gpt_observatory.telemetry.gpu_energy import EnergyAttributor, Share

    probe = EnergyAttributor()
    if not probe.start(background=False):
        print(probe.status)
        return 0
    start = time.perf_counter()
    for _ in range(100):  # what a worker thread pays per generation: two forced counter reads
        probe.close(probe.open(Share(0)))
    forced = (time.perf_counter() - start) / 100
    probe.stop()
    try:
        import torch
    except ImportError:
        print("torch is not installed: no model to run on the GPU")
        return 0
    if not torch.cuda.is_available():
        print("NVML sees a GPU but this torch has no CUDA: install a CUDA build")
        return 0

    from tests.telemetry.energy_load import PROMPTS, TinyGpt, measure

    with tempfile.TemporaryDirectory() as state:
        run = measure(Path(state), TinyGpt("cuda"), requests=args.requests, clients=args.clients,
                      max_tokens=args.max_tokens)
    print(f"GPU: {torch.cuda.get_device_name(0)}; a generation's two forced reads (open + close, in its worker "
          f"thread): {forced * 1e3:.2f} ms")
    print(f"{'tenant':8} {'prompt B':>8} {'requests':>8} {'out tok':>8} {'GPU-s':>9} {'J':>10} {'J/token':>9}")
    for tenant, t in sorted(run.tenants.items()):
        print(f"{tenant:8} {len(PROMPTS[tenant]):8d} {t['requests']:8.0f} {t['output_tokens']:8.0f} "
              f"{t['gpu_seconds']:9.2f} {t['gpu_joules']:10.1f} {t['j_per_token']:9.4f}")
    print(f"attributed {run.attributed_j:.1f} J, NVML delta {run.nvml_delta_j:.1f} J, idle {run.idle_j:.1f} J; "
          f"rows without energy: {run.rows_without_energy}")
    ok = abs(run.ratio - 1) <= 0.05 and run.rows_without_energy == 0
    print(f"{'PASS' if ok else 'FAIL'}  attributed / NVML delta = {run.ratio:.4f}   target within 5 %")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
