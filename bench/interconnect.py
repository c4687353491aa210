"""Interconnect sampler cost, with a fake NVML (8 H200-like GPUs, 18 NVLink links each) and a fake
sysfs tree (8 InfiniBand HCA ports), in one run:

1. one interconnect sample (every NVLink/PCIe call, one field-values call per GPU, every IB counter
   file, and the conversion to OTel points), per sample and per GPU/port;
2. the GPU fast-path sample (``GpuCollector.sample()``) with the interconnect collector off, on at
   its 10 s default, and on with its thread sampling every ``--stress-interval`` seconds (so it runs
   throughout the measurement: GIL contention, the only thing the two share); rounds alternate so
   machine noise hits all three alike.

The fake answers in microseconds where a driver takes longer: this measures our code's overhead, not
NVML's. On the GPU machine, ``--real`` prints what NVML and sysfs return instead.

    python bench/interconnect.py [--samples 2000] [--rounds 7] [--stress-interval 0.01] [--real]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from opentelemetry.metrics import NoOpMeterProvider

from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.gpu import GpuCollector

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the fake NVML lives with the tests
from tests.telemetry.fake_nvml import FakeGpu, FakeNvml, write_ib_tree


def timed(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def fake(gpus: int, ib_root: Path) -> FakeNvml:
    for i in range(8):
        write_ib_tree(ib_root, f"mlx5_{i}", 1)
    return FakeNvml([FakeGpu(f"GPU-{i:04d}", bus_id=f"00000000:{0x19 + i:02X}:00.0") for i in range(gpus)])


def real() -> int:
    collector = GpuCollector(interconnect_interval_s=3600, meter_provider=NoOpMeterProvider())
    if not collector.start(background=False):
        print(collector.status)
        return 0
    ic = collector.interconnect
    start = time.perf_counter()
    points = ic.sample()
    took = time.perf_counter() - start
    print(f"driver {collector.driver_version}; one interconnect sample: {took * 1e3:.2f} ms")
    for metric, observed in points.items():
        print(f"{metric}: {len(observed)} series")
        for value, attrs in observed[:40]:
            keep = {k: v for k, v in attrs.items() if k not in (names.HW_NAME, names.HW_TYPE)}
            print(f"  {value:>16,}  {keep}")
    print("read errors:", ic.read_errors)
    collector.stop()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--samples", type=int, default=2000, help="fast-path samples per round")
    ap.add_argument("--link-samples", type=int, default=200, help="interconnect samples")
    ap.add_argument("--rounds", type=int, default=7, help="alternating off/on rounds")
    ap.add_argument("--stress-interval", type=float, default=0.01, help="interconnect interval while 'on' (s)")
    ap.add_argument("--real", action="store_true", help="print the real NVML/sysfs values (GPU machine)")
    args = ap.parse_args()
    if args.real:
        return real()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def collector(interconnect_s: float, background: bool = True) -> GpuCollector:
            c = GpuCollector(nvml=fake(args.gpus, root), interval_s=3600, interconnect_interval_s=interconnect_s,
                             infiniband_root=root, meter_provider=NoOpMeterProvider())  # fmt: skip
            assert c.start(background=background), c.status
            return c

        alone = collector(3600, background=False)  # no thread: the interconnect sample measured by itself
        link_sample = timed(alone.interconnect.sample, args.link_samples)
        links = len(alone.interconnect.points()[names.GPU_NVLINK_UP.name])
        alone.stop()
        runs = {"off": collector(0), "on, every 10 s": collector(10.0),
                f"on, every {args.stress_interval * 1e3:g} ms": collector(args.stress_interval)}  # fmt: skip
        rounds: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.rounds):
            for label, c in runs.items():
                rounds[label].append(timed(c.sample, args.samples))
        for c in runs.values():
            c.stop()
    per_gpu = link_sample / args.gpus * 1e6
    print(f"fake NVML: {args.gpus} GPUs, {links} NVLink links; fake sysfs: 8 InfiniBand ports")
    print(f"interconnect sample               {link_sample * 1e6:9.1f} us/sample  ({per_gpu:.1f} us per GPU and port)")
    off = statistics.median(rounds["off"])
    for label, times in rounds.items():
        fast = statistics.median(times)
        print(f"GPU fast sample, interconnect {label:<18} {fast * 1e6:7.1f} us/sample  x{fast / off:.2f} of off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
