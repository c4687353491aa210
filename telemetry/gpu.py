"""NVML GPU collector: samples every NVIDIA GPU (and MIG instance) off the request path.

``GpuCollector.start()`` initialises NVML once, caches handles and static values (name, UUID,
memory total), takes a first sample and starts a sampler thread: the cheap getters (2-10 µs each
on an H100) every ``interval_s``; the slow ones (energy counter ~3 ms, per-process memory, ECC
counts, XID events) every ``slow_interval_s``. The OpenTelemetry instruments and the optional
DCGM-compatible Prometheus collector read the cached snapshot; no export or request calls NVML.
No driver or no GPU: one log line, no series, nothing raised. With ``interconnect_interval_s`` set,
NVLink, PCIe and InfiniBand are sampled by :mod:`._interconnect` on a thread of its own (InfiniBand
also on a host with no GPU).
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from gpt_observatory.telemetry._dcgm import DcgmCollector
from gpt_observatory.telemetry._gpu_series import GpuInstruments, Points, otel_points
from gpt_observatory.telemetry._infiniband import discover as ib_ports
from gpt_observatory.telemetry._interconnect import InterconnectCollector
from gpt_observatory.telemetry._nvml import (
    Device,
    GpuInfo,
    GpuSample,
    ProcessMemory,
    Reading,
    address,
    build_sample,
    discover,
    read,
    try_call,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from prometheus_client.registry import CollectorRegistry

    from gpt_observatory.telemetry.settings import Settings

__all__ = ["NO_DRIVER", "NO_GPUS", "GpuCollector", "GpuInfo", "GpuSample", "ProcessMemory", "start_from_settings"]

NO_DRIVER = "no NVIDIA driver found"
NO_GPUS = "no GPUs"
_said: set[str] = set()  # said once per process, however often telemetry is reconfigured


class GpuCollector:
    """Samples NVML into a cached snapshot that OTel instruments (and DCGM names) read."""

    def __init__(
        self,
        interval_s: float = 1.0,
        slow_interval_s: float = 10.0,
        dcgm_names: bool = False,
        meter_provider: MeterProvider | None = None,
        interconnect_interval_s: float = 0.0,
        infiniband_root: Path = Path("/sys/class/infiniband"),
        nvml: Any = None,
    ) -> None:
        """``interconnect_interval_s`` > 0 also samples NVLink, PCIe and InfiniBand on a thread of
        its own; ``nvml`` stands in for the ``pynvml`` module (tests and benchmarks)."""
        self.interval_s = interval_s
        self.interconnect_interval_s = interconnect_interval_s
        self.infiniband_root = infiniband_root
        self.interconnect: InterconnectCollector | None = None
        self._nvml_module = nvml
        self.slow_interval_s = slow_interval_s
        self.dcgm_names = dcgm_names
        self.status: str | None = None  # "ok", or why there is no GPU telemetry
        self.driver_version: str | None = None
        self._meter_provider = meter_provider
        self._nvml: Any = None
        self._devices: list[Device] = []
        self._snapshot: tuple[GpuSample, ...] = ()
        self._points: tuple[tuple[GpuSample, ...], Points] | None = None
        self._errors: Counter[tuple[str, str, str]] = Counter()
        self._process_names: dict[int, str] = {}
        self._events: Any = None
        self._registered: list[tuple[CollectorRegistry, DcgmCollector]] = []
        self._instruments: GpuInstruments | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, background: bool = True) -> bool:
        """Initialise NVML, take a first sample, register the instruments and (when
        ``background``) start sampling. False, after one log line, when there is no GPU: then
        InfiniBand ports, if the host has any, are still sampled (a CPU or storage node of the
        fabric has HCAs and no GPU)."""
        with self._lock:
            if self.status is not None:
                return self.status == "ok"
            started = self._start_gpus(background)
            if not started and self.interconnect_interval_s > 0 and ib_ports(self.infiniband_root):
                self.interconnect = InterconnectCollector(
                    None, [], self.infiniband_root, self.interconnect_interval_s, self._meter_provider
                )
                self.interconnect.start(background)
            return started

    def _start_gpus(self, background: bool) -> bool:
        """NVML and the GPU sampler (and NVLink/PCIe/InfiniBand); called under the lock."""
        try:
            pynvml = self._nvml_module or importlib.import_module("pynvml")
        except ImportError:
            return self._unavailable("nvidia-ml-py is not installed; no GPU telemetry")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            absent = exc.value in (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
            return self._unavailable(NO_DRIVER if absent else f"NVML could not start ({exc}); no GPU telemetry")
        self._nvml = pynvml
        try:
            self._devices = discover(pynvml)
        except pynvml.NVMLError as exc:
            self._shutdown_nvml()
            return self._unavailable(f"NVML could not list the GPUs ({exc}); no GPU telemetry")
        if not self._devices:
            self._shutdown_nvml()
            return self._unavailable(NO_GPUS)
        self.status = "ok"
        self.driver_version = try_call(pynvml.nvmlSystemGetDriverVersion)
        self._events = self._open_xid_events()
        self._announce()
        self.sample(slow=True)
        self._instruments = GpuInstruments(self._current_points, self._meter_provider)
        if self.dcgm_names:
            from prometheus_client import REGISTRY

            try:
                self.register_dcgm(REGISTRY)
            except ValueError:  # the DCGM names are taken: a configuration error, raised here
                self.stop()
                raise
        if self.interconnect_interval_s > 0:
            gpus = [(dev.info, dev.handle) for dev in self._devices if dev.info.parent_uuid is None]
            self.interconnect = InterconnectCollector(
                pynvml, gpus, self.infiniband_root, self.interconnect_interval_s, self._meter_provider
            )
            self.interconnect.start(background)
        if background:
            self._thread = threading.Thread(target=self._run, name="observatory-gpu-sampler", daemon=True)
            self._thread.start()
        return True

    def stop(self) -> None:
        """Stop sampling, withdraw the DCGM series and release NVML. Final."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self.interconnect is not None:
            self.interconnect.stop()
        with self._lock:
            for registry, collector in self._registered:
                try:
                    registry.unregister(collector)
                except KeyError:
                    pass
            self._registered.clear()
            self._snapshot, self._points = (), None
            if self._devices:
                self._devices = []
                if self._events is not None:
                    try_call(self._nvml.nvmlEventSetFree, self._events)
                self._shutdown_nvml()

    def register_dcgm(self, registry: CollectorRegistry) -> None:
        """Also expose the snapshot on ``registry`` under dcgm-exporter's default names and labels."""
        collector = DcgmCollector(self.snapshot)
        registry.register(collector)
        self._registered.append((registry, collector))

    # ------------------------------------------------------------------ reading
    def snapshot(self) -> list[GpuSample]:
        """The latest sample of every device (empty without GPUs or after ``stop()``)."""
        return list(self._snapshot)

    def fast_calls(self) -> list[tuple[Any, tuple[Reading, ...]]]:
        """(handle, calls) per device: the NVML calls one fast-path ``sample()`` makes (for benchmarks)."""
        with self._lock:
            return [(dev.handle, dev.fast) for dev in self._devices]

    @property
    def read_errors(self) -> dict[tuple[str, str, str], int]:
        """Failed NVML calls so far: (hw.id, function, error class) -> count."""
        return dict(self._errors)

    def sample(self, slow: bool = False) -> list[GpuSample]:
        """Read every device now (the slow readings too when ``slow``) and publish the snapshot."""
        with self._lock:
            if not self._devices:
                return []
            if slow:
                self._read_slow()
            now = time.time()
            samples = []
            for dev in self._devices:
                values, dev.fast = read(dev.handle, dev.info.uuid, dev.fast, self._errors)
                samples.append(build_sample(dev.info, now, values, dev.slow_values, dev.xid))
            self._snapshot = tuple(samples)
            return samples

    def _read_slow(self) -> None:
        seen: dict[int, str] = {}
        for dev in self._devices:
            values, dev.slow = read(dev.handle, dev.info.uuid, dev.slow, self._errors)
            if "processes" in values:
                values["processes"] = tuple(self._process(dev, p, seen) for p in values["processes"])
            dev.slow_values = values
        self._process_names = seen
        if self._events is not None:
            self._drain_xid_events()

    def _process(self, dev: Device, proc: Any, seen: dict[int, str]) -> ProcessMemory:
        name = self._process_names.get(proc.pid)
        if name is None:
            try:
                name = os.path.basename(self._nvml.nvmlSystemGetProcessName(proc.pid))
            except self._nvml.NVMLError as exc:
                self._errors[(dev.info.uuid, "nvmlSystemGetProcessName", type(exc).__name__)] += 1
                name = ""
        seen[proc.pid] = name
        return ProcessMemory(proc.pid, name, proc.usedGpuMemory)

    def _current_points(self) -> Points:
        # Converted once per snapshot, by whichever reader collects first (never on the sampler's clock).
        snap, cached = self._snapshot, self._points
        if cached is None or cached[0] is not snap:
            cached = (snap, otel_points(snap, dict(self._errors)) if snap else {})
            self._points = cached
        return cached[1]

    def _run(self) -> None:
        next_slow = time.monotonic() + self.slow_interval_s
        failed = False
        while not self._stop.wait(self.interval_s):
            slow = time.monotonic() >= next_slow
            if slow:
                next_slow = time.monotonic() + self.slow_interval_s
            try:
                self.sample(slow=slow)
            except Exception:  # the sampler's boundary: log the first failure, keep sampling
                if not failed:
                    logger.opt(exception=True).warning("GPU sampling failed; it keeps retrying")
                failed = True

    # ------------------------------------------------------------------ XID events
    def _open_xid_events(self) -> Any:
        nvml = self._nvml
        event_set = try_call(nvml.nvmlEventSetCreate)
        if event_set is None:
            return None
        for dev in self._devices:
            if dev.info.parent_uuid is None:
                try:
                    nvml.nvmlDeviceRegisterEvents(dev.handle, nvml.nvmlEventTypeXidCriticalError, event_set)
                    dev.xid = (0, None)
                except nvml.NVMLError as exc:
                    self._errors[(dev.info.uuid, "nvmlDeviceRegisterEvents", type(exc).__name__)] += 1
        if all(dev.xid[0] is None for dev in self._devices):
            try_call(nvml.nvmlEventSetFree, event_set)
            return None
        return event_set

    def _drain_xid_events(self) -> None:
        nvml = self._nvml
        by_handle = {address(dev.handle): dev for dev in self._devices if dev.xid[0] is not None}
        for _ in range(1000):  # bounded: a storm cannot stall the sampler
            try:
                event = nvml.nvmlEventSetWait_v2(self._events, 0)
            except nvml.NVMLError_Timeout:
                return
            except nvml.NVMLError as exc:
                self._errors[("", "nvmlEventSetWait_v2", type(exc).__name__)] += 1
                return
            dev = by_handle.get(address(event.device))
            if dev is not None and event.eventType & nvml.nvmlEventTypeXidCriticalError:
                dev.xid = ((dev.xid[0] or 0) + 1, int(event.eventData))

    # ------------------------------------------------------------------ helpers
    def _unavailable(self, message: str) -> bool:
        self.status = message
        if message not in _said:
            _said.add(message)
            logger.info(message)
        return False

    def _announce(self) -> None:
        gpus = [d.info for d in self._devices if d.info.parent_uuid is None]
        logger.info(
            "GPU telemetry: {} ({} device(s), driver {})",
            ", ".join(g.name for g in gpus),
            len(self._devices),
            self.driver_version,
        )
        for g in gpus:
            if not g.reports_utilization:
                logger.info(
                    "GPU {} is in MIG mode: NVML reports no utilisation for it or its instances, "
                    "so hw.gpu.utilization is not exported for them",
                    g.uuid,
                )

    def _shutdown_nvml(self) -> None:
        try_call(self._nvml.nvmlShutdown)


def start_from_settings(settings: Settings, meter_provider: MeterProvider | None = None) -> GpuCollector | None:
    """The collector ``telemetry.configure()`` runs (``gpu_*`` settings); None when off or no GPU."""
    if not settings.gpu_enabled:
        return None
    collector = GpuCollector(
        interval_s=settings.gpu_interval_s,
        slow_interval_s=settings.gpu_slow_interval_s,
        dcgm_names=settings.gpu_dcgm_names,
        meter_provider=meter_provider,
        interconnect_interval_s=settings.interconnect_interval_s,
        infiniband_root=settings.interconnect_infiniband_root,
    )
    return collector if collector.start() else None
