"""Interconnect collector: NVLink per link and PCIe from NVML, InfiniBand ports from sysfs.

Started by the GPU collector with its NVML handles and sampled on a thread of its own every
``interval_s`` (10 s by default), so the GPU fast path neither waits for nor shares a lock with it.
Which NVLink links a GPU has is probed once at start; an NVML call or field a device does not
support is dropped after its first failure and never asked again. Instruments read the points
of the last sample.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger
from opentelemetry.metrics import MeterProvider

from gpt_observatory.telemetry import _infiniband as ib
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry._gpu_series import GpuInstruments, Points, device_attributes
from gpt_observatory.telemetry._nvml import GpuInfo, Reading, read, try_call

INTERCONNECT_METRICS: tuple[names.Metric, ...] = (
    names.HW_GPU_IO,
    names.GPU_NVLINK_UP,
    names.GPU_PCIE_LINK_WIDTH,
    names.GPU_PCIE_LINK_GENERATION,
    names.GPU_PCIE_LINK_DOWNTRAINED,
    names.HW_ERRORS,
    names.HW_NETWORK_IO,
    names.HW_NETWORK_PACKETS,
    names.HW_NETWORK_UP,
    names.INTERCONNECT_READ_ERRORS,
)
# names.GPU_LINK_ERROR_TYPES[i] is NVML's NvLink error counter i (DL_REPLAY, DL_RECOVERY, DL_CRC_FLIT, DL_CRC_DATA).
NVLINK_ERROR_COUNTERS = range(4)
Series = tuple[names.Metric, dict[str, Any]]


@dataclass(slots=True)
class GpuLinks:
    """One GPU's interconnect: the calls it answers, the fields it reports, and the series of each
    reading (metric and attributes, bound once at start)."""

    info: GpuInfo
    handle: Any
    links: tuple[int, ...]
    calls: tuple[Reading, ...]
    fields: dict[tuple[int, int], str]  # (NVML field id, scope) -> reading key
    series: dict[str, Series]  # reading key -> its series
    values: dict[str, int] = field(default_factory=dict)  # the last reading, by key


def probe(nvml: Any, info: GpuInfo, handle: Any) -> GpuLinks:
    """Which links ``handle`` has (one NvLinkState call per possible link, once) and what to read."""
    links = tuple(
        link
        for link in range(nvml.NVML_NVLINK_MAX_LINKS)
        if try_call(nvml.nvmlDeviceGetNvLinkState, handle, link) is not None
    )
    base = device_attributes(info)
    calls: list[Reading] = []
    series: dict[str, Series] = {}
    for bound, width, generation in (
        ("current", nvml.nvmlDeviceGetCurrPcieLinkWidth, nvml.nvmlDeviceGetCurrPcieLinkGeneration),
        ("max", nvml.nvmlDeviceGetMaxPcieLinkWidth, nvml.nvmlDeviceGetMaxPcieLinkGeneration),
    ):
        calls += [Reading(f"pcie_width_{bound}", width), Reading(f"pcie_generation_{bound}", generation)]
        attrs = {**base, names.GPU_PCIE_LINK_BOUND: bound}
        series[f"pcie_width_{bound}"] = (names.GPU_PCIE_LINK_WIDTH, attrs)
        series[f"pcie_generation_{bound}"] = (names.GPU_PCIE_LINK_GENERATION, attrs)
    calls.append(Reading("pcie_replay", nvml.nvmlDeviceGetPcieReplayCounter))
    series["pcie_replay"] = (names.HW_ERRORS, {**base, names.HW_ERROR_TYPE: "pcie_replay"})
    series["pcie_downtrained"] = (names.GPU_PCIE_LINK_DOWNTRAINED, base)
    fields: dict[tuple[int, int], str] = {}
    io = {**base, names.GPU_LINK_TYPE: "pcie"}
    for direction, field_id in zip(
        names.NETWORK_IO_DIRECTIONS,
        (nvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES, nvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES),
        strict=True,
    ):
        fields[(field_id, 0)] = f"pcie_bytes:{direction}"
        series[f"pcie_bytes:{direction}"] = (names.HW_GPU_IO, {**io, names.NETWORK_IO_DIRECTION: direction})
    for link in links:
        on_link = {**base, names.GPU_NVLINK_LINK: link}
        calls.append(Reading(f"nvlink_up:{link}", nvml.nvmlDeviceGetNvLinkState, (link,)))
        series[f"nvlink_up:{link}"] = (names.GPU_NVLINK_UP, on_link)
        for counter in NVLINK_ERROR_COUNTERS:
            key = f"nvlink_error:{link}:{counter}"
            calls.append(Reading(key, nvml.nvmlDeviceGetNvLinkErrorCounter, (link, counter)))
            series[key] = (names.HW_ERRORS, {**on_link, names.HW_ERROR_TYPE: names.GPU_LINK_ERROR_TYPES[counter]})
        io = {**on_link, names.GPU_LINK_TYPE: "nvlink"}
        for direction, field_id in zip(
            names.NETWORK_IO_DIRECTIONS,
            (nvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, nvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX),
            strict=True,
        ):
            key = f"nvlink_bytes:{link}:{direction}"
            fields[(field_id, link)] = key
            series[key] = (names.HW_GPU_IO, {**io, names.NETWORK_IO_DIRECTION: direction})
    return GpuLinks(info, handle, links, tuple(calls), fields, series)


def read_links(nvml: Any, dev: GpuLinks, errors: Counter[tuple[str, str, str]]) -> None:
    """Make ``dev``'s calls and its one field-values call; drop what the device does not support."""
    values, dev.calls = read(dev.handle, dev.info.uuid, dev.calls, errors)
    if dev.fields:
        call = (Reading("fields", nvml.nvmlDeviceGetFieldValues, (list(dev.fields),)),)
        got, kept = read(dev.handle, dev.info.uuid, call, errors)
        if not kept:  # the call itself is unsupported
            dev.fields = {}
        for fv in got.get("fields", ()):
            spec, status = (fv.fieldId, fv.scopeId), fv.nvmlReturn
            if status != nvml.NVML_SUCCESS:
                error = type(nvml.NVMLError(status)).__name__
                errors[(dev.info.uuid, f"nvmlDeviceGetFieldValues:{spec[0]}", error)] += 1
                if status in (nvml.NVML_ERROR_NOT_SUPPORTED, nvml.NVML_ERROR_INVALID_ARGUMENT):
                    del dev.fields[spec]
                continue
            key = dev.fields[spec]
            # NVLink throughput fields count KiB; the PCIe ones count bytes.
            values[key] = fv.value.ullVal * 1024 if key.startswith("nvlink") else fv.value.ullVal
    width, widest = values.get("pcie_width_current"), values.get("pcie_width_max")
    if width is not None and widest is not None:
        values["pcie_downtrained"] = int(width < widest)
    dev.values = values


def otel_points(
    gpus: Sequence[GpuLinks], ports: Sequence[ib.IbReading], read_errors: dict[tuple[str, str, str], int]
) -> Points:
    """The last readings as OTel observations (bytes, counts, 0/1); a reading not taken yields no point."""
    out: Points = {m.name: [] for m in INTERCONNECT_METRICS}

    def add(metric: names.Metric, value: float | None, attrs: dict[str, Any]) -> None:
        if value is not None:
            out[metric.name].append((value, attrs))

    for dev in gpus:
        for key, value in dev.values.items():
            metric, attrs = dev.series[key]
            out[metric.name].append((int(value != 0) if metric is names.GPU_NVLINK_UP else value, attrs))
    for r in ports:
        base = {
            names.HW_ID: r.port.hw_id,
            names.HW_NAME: r.port.device,
            names.HW_TYPE: names.HW_TYPE_NETWORK,
            names.IB_DEVICE: r.port.device,
            names.IB_PORT: r.port.port,
        }
        for direction in names.NETWORK_IO_DIRECTIONS:
            add(names.HW_NETWORK_IO, r.bytes.get(direction), {**base, names.NETWORK_IO_DIRECTION: direction})
            add(names.HW_NETWORK_PACKETS, r.packets.get(direction), {**base, names.NETWORK_IO_DIRECTION: direction})
        for error, count in r.errors.items():
            add(names.HW_ERRORS, count, {**base, names.HW_ERROR_TYPE: error})
        add(names.HW_NETWORK_UP, r.up, {**base, names.IB_RATE: r.rate, names.IB_LINK_LAYER: r.port.link_layer})
    for (hw_id, source, error), count in read_errors.items():
        add(names.INTERCONNECT_READ_ERRORS, count, {names.HW_ID: hw_id, names.INTERCONNECT_SOURCE: source,
                                                    names.HW_ERROR_TYPE: error})  # fmt: skip
    return out


class InterconnectCollector:
    """Samples NVLink, PCIe and InfiniBand counters on its own thread; instruments read the last points."""

    def __init__(
        self,
        nvml: Any,
        gpus: Iterable[tuple[GpuInfo, Any]],
        infiniband_root: Path = Path("/sys/class/infiniband"),
        interval_s: float = 10.0,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.interval_s = interval_s
        self._nvml = nvml
        self._gpu_handles = list(gpus)
        self._root = Path(infiniband_root)
        self._meter_provider = meter_provider
        self._gpus: list[GpuLinks] = []
        self._ports: list[ib.IbPort] = []
        self._readings: list[ib.IbReading] = []
        self._errors: Counter[tuple[str, str, str]] = Counter()
        self._points: Points = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.instruments: list[Any] = []

    def start(self, background: bool = True) -> None:
        """Probe links and ports, take a first sample, register instruments, start the thread."""
        with self._lock:
            self._gpus = [probe(self._nvml, info, handle) for info, handle in self._gpu_handles]
            self._ports = ib.discover(self._root)
        links = sum(len(g.links) for g in self._gpus)
        logger.info("Interconnect telemetry: {} NVLink link(s) on {} GPU(s), {} InfiniBand port(s) under {}",
                    links, len(self._gpus), len(self._ports), self._root)  # fmt: skip
        self.sample()
        self.instruments = GpuInstruments(
            lambda: self._points, self._meter_provider, INTERCONNECT_METRICS, scope=__name__
        ).instruments
        if background:
            self._thread = threading.Thread(target=self._run, name="observatory-interconnect-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop sampling (before NVML is shut down). Final."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._lock:
            self._gpus, self._ports, self._readings, self._points = [], [], [], {}

    def sample(self) -> Points:
        """Read every GPU link and InfiniBand port now and publish the points."""
        with self._lock:
            for dev in self._gpus:
                read_links(self._nvml, dev, self._errors)
            self._readings = [ib.read_port(port, self._errors) for port in self._ports]
            self._points = otel_points(self._gpus, self._readings, dict(self._errors))
            return self._points

    def points(self) -> Points:
        """The last sample's observations (empty after ``stop()``)."""
        return self._points

    @property
    def read_errors(self) -> dict[tuple[str, str, str], int]:
        """Failed reads so far: (hw.id, NVML function or sysfs file, error class) -> count."""
        return dict(self._errors)

    def _run(self) -> None:
        failed = False
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # the sampler's boundary: log the first failure, keep sampling
                if not failed:
                    logger.opt(exception=True).warning("Interconnect sampling failed; it keeps retrying")
                failed = True
