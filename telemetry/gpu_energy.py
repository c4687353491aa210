"""GPU-seconds and joules per generation, attributed from each GPU's NVML energy counter (issue 17).

An :class:`EnergyAttributor` reads a GPU's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
mJ since the driver loaded) on a sampler thread every ``interval_s`` while a generation is open on it,
and also when a generation opens or closes there (a forced read, made by the caller's thread: the
in-process backend's worker, never the event loop). Between two reads the set of open generations is
therefore constant, and the interval's energy and seconds are split between them by weight:

- a generation's weight is the tokens it reported in the interval (:meth:`Share.add`; the prompt's
  tokens count in its first interval, output tokens when they are produced);
- one that cannot report tokens as it makes them (a non-streaming call: ``live=False``) also weighs,
  in each interval, the mean of what the live ones reported there;
- when no weight is positive (nobody reported a token: a long prefill, non-streaming calls only),
  equal shares.

Energy read while no generation is open is idle energy: counted (:attr:`EnergyAttributor.idle_j` and
``observatory.gpu.energy.idle``), attributed to nobody. So attributed + idle is the counter's increase,
up to float rounding. The counter is 64 bits of mJ (a wrap takes ~800,000 years at 700 W): one that went
backwards is a reset (the driver reloaded) and gives that interval 0 J (counted in ``resets``); its
seconds still count. No NVML or no GPU: :func:`acquire` returns None and nothing is attributed (the
callers leave their figures None, not 0).
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.summed import SummedCounter

__all__ = ["DEFAULT_INTERVAL_S", "EnergyAttributor", "Share", "acquire", "delta_j", "release", "split", "weights"]

DEFAULT_INTERVAL_S = 0.05


@dataclass(slots=True, eq=False)
class Share:
    """One open generation on one GPU; its ``seconds`` and ``joules`` grow at every read until it closes."""

    device: int  # index into the attributor's devices
    live: bool = True  # reports its tokens as it makes them
    tokens: int = 0  # reported so far (the prompt's included)
    weighed: int = 0  # of those, already weighed in an interval
    seconds: float = 0.0
    joules: float = 0.0
    opened: bool = False  # counted from its open() on
    closed: bool = False

    def add(self, n: int = 1) -> None:
        """``n`` more tokens made now (called from any thread; a lost race only shifts weight)."""
        self.tokens += n


@dataclass(slots=True)
class _Device:
    handle: Any
    uuid: str
    last_mj: int
    last_t: float
    open: list[Share] = field(default_factory=list)


def delta_j(last_mj: int, now_mj: int) -> tuple[float, bool]:
    """Joules between two counter reads, and whether the counter was reset (then 0 J)."""
    if now_mj < last_mj:
        return 0.0, True
    return (now_mj - last_mj) / 1000, False  # int / int: rounded once, exactly


def weights(reported: Sequence[int], live: Sequence[bool]) -> list[float]:
    """Each open generation's weight in one interval (module docstring), from what it reported there."""
    live_reported = [r for r, lv in zip(reported, live, strict=True) if lv]
    mean = sum(live_reported) / len(live_reported) if live_reported else 0.0
    out = [float(r) if lv else r + mean for r, lv in zip(reported, live, strict=True)]
    return out if sum(out) > 0 else [1.0] * len(out)


def split(joules: float, seconds: float, weights_: Sequence[float]) -> tuple[list[tuple[float, float]], float]:
    """(seconds, joules) per weight, and the idle joules: all of ``joules`` when there is no weight."""
    if not weights_:
        return [], joules
    total = sum(weights_)
    shares = [(seconds * w / total, joules * w / total) for w in weights_]
    # The last share takes the rounding remainder, so the parts sum to the interval exactly.
    if len(shares) > 1:
        s_rest = seconds - sum(s for s, _ in shares[:-1])
        j_rest = joules - sum(j for _, j in shares[:-1])
        shares[-1] = (max(s_rest, 0.0), max(j_rest, 0.0))
    return shares, 0.0


class EnergyAttributor:
    """Splits each GPU's energy counter between the generations open on it (module docstring)."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S, nvml: Any = None, clock: Any = time.monotonic) -> None:
        """``nvml`` stands in for the ``pynvml`` module (tests); ``clock`` for ``time.monotonic``."""
        self.interval_s = interval_s
        self.status: str | None = None  # "ok", or why nothing is attributed
        self.attributed_j = 0.0
        self.idle_j = 0.0
        self.resets = 0
        self._nvml_module = nvml
        self._nvml: Any = None
        self._clock = clock
        self._devices: list[_Device] = []
        self._by_uuid: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle = SummedCounter.of(__name__, names.GPU_ENERGY_IDLE)

    # ------------------------------------------------------------------ lifecycle
    def start(self, background: bool = True) -> bool:
        """Initialise NVML and read every GPU's counter once; False (with ``status`` saying why) without."""
        try:
            nvml = self._nvml_module or importlib.import_module("pynvml")
        except ImportError:
            return self._unavailable("nvidia-ml-py is not installed; no GPU energy attribution")
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            return self._unavailable(f"no NVIDIA driver found ({exc}); no GPU energy attribution")
        self._nvml = nvml
        try:
            now = self._clock()
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                uuid = nvml.nvmlDeviceGetUUID(handle)
                self._devices.append(_Device(handle, uuid, int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle)), now))
                self._by_uuid[uuid] = i
        except nvml.NVMLError as exc:
            self._devices.clear()
            nvml.nvmlShutdown()
            return self._unavailable(f"NVML cannot read the GPUs' energy counters ({exc}); no GPU energy attribution")
        if not self._devices:
            nvml.nvmlShutdown()
            return self._unavailable("no GPUs; no GPU energy attribution")
        self.status = "ok"
        if background:
            self._thread = threading.Thread(target=self._run, name="observatory-gpu-energy", daemon=True)
            self._thread.start()
        return True

    def stop(self) -> None:
        """Stop sampling and release NVML (open generations keep what they were given). Final."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._lock:
            if self._devices:
                self._devices = []
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError:
                    pass

    # ------------------------------------------------------------------ generations
    def device(self, cuda_index: int, uuid: str | None = None) -> int | None:
        """The attributor's device for a model on ``cuda:<cuda_index>`` (by ``uuid`` when known: CUDA's
        numbering differs from NVML's under ``CUDA_VISIBLE_DEVICES``); None when there is no such GPU."""
        if uuid is not None:
            return self._by_uuid.get(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        return cuda_index if 0 <= cuda_index < len(self._devices) else None

    def open(self, share: Share) -> Share:
        """``share``'s generation starts now on its device (forces a read: call it off the event loop)."""
        with self._lock:
            if self._devices and not share.closed:
                dev = self._devices[share.device]
                self._read(dev)
                dev.open.append(share)
                share.opened = True
        return share

    def close(self, share: Share) -> tuple[float, float]:
        """End ``share`` now (forces a read: call it off the event loop); its (seconds, joules)."""
        with self._lock:
            if share.opened and not share.closed and self._devices:
                dev = self._devices[share.device]
                self._read(dev)
                dev.open.remove(share)
            share.closed = True
        return share.seconds, share.joules

    # ------------------------------------------------------------------ sampling
    def sample(self) -> None:
        """Read every GPU that has a generation open and split what it used since the last read."""
        with self._lock:
            for dev in self._devices:
                if dev.open:
                    self._read(dev)

    def _read(self, dev: _Device) -> None:
        """Read ``dev``'s counter and split the interval since its last read (under the lock)."""
        try:
            now_mj = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(dev.handle))
        except self._nvml.NVMLError:
            return  # this reading is dropped: the next one covers the interval
        now = self._clock()
        joules, reset = delta_j(dev.last_mj, now_mj)
        seconds = max(now - dev.last_t, 0.0)
        dev.last_mj, dev.last_t = now_mj, now
        self.resets += reset
        shares = dev.open
        reported = [s.tokens - s.weighed for s in shares]
        parts, idle = split(joules, seconds, weights(reported, [s.live for s in shares]) if shares else [])
        for s, r, (sec, j) in zip(shares, reported, parts, strict=True):
            s.weighed += r
            s.seconds += sec
            s.joules += j
        self.attributed_j += joules - idle
        if idle:
            self.idle_j += idle
            self._idle.add(idle, {names.HW_ID: dev.uuid, names.HW_TYPE: "gpu"})

    def _run(self) -> None:
        failed = False
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # the sampler's boundary: log the first failure, keep sampling
                if not failed:
                    logger.opt(exception=True).warning("GPU energy sampling failed; it keeps retrying")
                failed = True

    def _unavailable(self, message: str) -> bool:
        self.status = message
        return False


_shared_lock = threading.Lock()
_shared: list[list[Any]] = []  # [nvml stand-in or None, attributor, users]
_said: set[str] = set()
_ABSENT = ("nvidia-ml-py is not installed", "no NVIDIA driver found", "no GPUs")


def acquire(interval_s: float = DEFAULT_INTERVAL_S, nvml: Any = None) -> EnergyAttributor | None:
    """The process's attributor (started by its first user; every in-process model on a GPU shares it),
    or None without NVML or a GPU (said once). Give it back with :func:`release`."""
    with _shared_lock:
        for entry in _shared:
            if entry[0] is nvml:
                entry[2] += 1
                return entry[1]
        attributor = EnergyAttributor(interval_s, nvml)
        if not attributor.start():
            if attributor.status not in _said:  # no driver, no GPU: the GPU collector says so already
                _said.add(attributor.status or "")
                absent = attributor.status.startswith(_ABSENT)
                logger.log("DEBUG" if absent else "INFO", attributor.status)
            return None
        _shared.append([nvml, attributor, 1])
        return attributor


def release(attributor: EnergyAttributor) -> None:
    """One user less; the last one stops it."""
    with _shared_lock:
        for entry in _shared:
            if entry[1] is attributor:
                entry[2] -= 1
                if entry[2] == 0:
                    _shared.remove(entry)
                    attributor.stop()
                return
