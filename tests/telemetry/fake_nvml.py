"""A stand-in for the ``pynvml`` module: GPUs described as data, NVML's own structs and errors.

Constants, structs and error classes are pynvml's; every ``nvml*`` function that is not written
here raises ``NVMLError_NotSupported``, as NVML does for a call a device lacks. Calls are counted
by function name, so a test can say a call was not repeated. Used by the interconnect tests and
``bench/interconnect.py``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pynvml

GIB = 1 << 30


@dataclass
class FakeGpu:
    """One GPU as NVML would describe it. ``nvlinks``: number of NVLink links (0: a PCIe-only card)."""

    uuid: str
    name: str = "NVIDIA H200"
    bus_id: str = "00000000:19:00.0"
    nvlinks: int = 18
    links_down: frozenset[int] = frozenset()
    pcie_width: tuple[int, int] = (16, 16)  # current, max
    pcie_generation: tuple[int, int] = (5, 5)
    pcie_replays: int = 0
    pcie_counters: bool = True  # NVML_FI_DEV_PCIE_COUNT_TX/RX_BYTES answered
    nvlink_kib: tuple[int, int] = (1024, 2048)  # TX, RX data KiB per link
    nvlink_errors: dict[tuple[int, int], int] = field(default_factory=dict)  # (link, NVML counter) -> count
    unsupported: frozenset[str] = frozenset()  # NVML functions this GPU answers NotSupported
    pcie_tx_bytes: int = 5 * GIB
    pcie_rx_bytes: int = 7 * GIB


class FakeNvml:
    """Module-like object that answers the NVML calls the collectors make from ``gpus``."""

    def __init__(self, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        real = getattr(pynvml, name)
        if name.startswith("nvml") and callable(real) and not isinstance(real, type):

            def unsupported(*args: Any) -> Any:
                self.calls[name] += 1
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

            unsupported.__name__ = name
            return unsupported
        return real

    def _call(self, name: str, gpu: FakeGpu | None = None) -> None:
        self.calls[name] += 1
        if gpu is not None and name in gpu.unsupported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    # ------------------------------------------------------------------ system and discovery
    def nvmlInit(self) -> None:
        self._call("nvmlInit")

    def nvmlShutdown(self) -> None:
        self._call("nvmlShutdown")

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.172.08"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def nvmlDeviceGetMigMode(self, gpu: FakeGpu) -> list[int]:
        return [0, 0]

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        return gpu.uuid

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:
        return gpu.name

    def nvmlDeviceGetPciInfo(self, gpu: FakeGpu) -> Any:
        info = pynvml.nvmlPciInfo_t()
        info.busId = gpu.bus_id.encode()
        return info

    # ------------------------------------------------------------------ the GPU collector's getters
    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu, version: Any = None) -> Any:
        self._call("nvmlDeviceGetMemoryInfo", gpu)
        return pynvml.c_nvmlMemory_v2_t(total=141 * GIB, reserved=GIB // 2, free=120 * GIB, used=20 * GIB)

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> Any:
        self._call("nvmlDeviceGetUtilizationRates", gpu)
        return pynvml.c_nvmlUtilization_t(gpu=87, memory=40)

    def nvmlDeviceGetEncoderUtilization(self, gpu: FakeGpu) -> list[int]:
        self._call("nvmlDeviceGetEncoderUtilization", gpu)
        return [0, 167_000]

    def nvmlDeviceGetDecoderUtilization(self, gpu: FakeGpu) -> list[int]:
        self._call("nvmlDeviceGetDecoderUtilization", gpu)
        return [0, 167_000]

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        self._call("nvmlDeviceGetPowerUsage", gpu)
        return 412_500

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:
        self._call("nvmlDeviceGetTemperature", gpu)
        return 61

    def nvmlDeviceGetClockInfo(self, gpu: FakeGpu, domain: int) -> int:
        self._call("nvmlDeviceGetClockInfo", gpu)
        return 1980

    def nvmlDeviceGetCurrentClocksEventReasons(self, gpu: FakeGpu) -> int:
        self._call("nvmlDeviceGetCurrentClocksEventReasons", gpu)
        return 0

    def nvmlDeviceGetTotalEnergyConsumption(self, gpu: FakeGpu) -> int:
        self._call("nvmlDeviceGetTotalEnergyConsumption", gpu)
        return 123_456_789

    def nvmlDeviceGetTotalEccErrors(self, gpu: FakeGpu, kind: int, counter: int) -> int:
        self._call("nvmlDeviceGetTotalEccErrors", gpu)
        return 0

    def nvmlDeviceGetComputeRunningProcesses_v3(self, gpu: FakeGpu) -> list[Any]:
        self._call("nvmlDeviceGetComputeRunningProcesses_v3", gpu)
        return []

    # ------------------------------------------------------------------ interconnect
    def nvmlDeviceGetNvLinkState(self, gpu: FakeGpu, link: int) -> int:
        self._call("nvmlDeviceGetNvLinkState", gpu)
        if gpu.nvlinks == 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if link >= gpu.nvlinks:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return int(link not in gpu.links_down)

    def nvmlDeviceGetNvLinkErrorCounter(self, gpu: FakeGpu, link: int, counter: int) -> int:
        self._call("nvmlDeviceGetNvLinkErrorCounter", gpu)
        return gpu.nvlink_errors.get((link, counter), 0)

    def nvmlDeviceGetFieldValues(self, gpu: FakeGpu, field_ids: list[Any]) -> Any:
        self._call("nvmlDeviceGetFieldValues", gpu)
        out = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        for value, spec in zip(out, field_ids, strict=True):
            value.fieldId, value.scopeId = spec if isinstance(spec, tuple) else (spec, 0)
            value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
            answer = self._field(gpu, value.fieldId, value.scopeId)
            if answer is None:
                value.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
            else:
                value.nvmlReturn = pynvml.NVML_SUCCESS
                value.value.ullVal = answer
        return out

    def _field(self, gpu: FakeGpu, field_id: int, scope: int) -> int | None:
        if field_id in (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX):
            if scope >= gpu.nvlinks:
                return None
            return gpu.nvlink_kib[field_id == pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX]
        if gpu.pcie_counters and field_id == pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES:
            return gpu.pcie_tx_bytes
        if gpu.pcie_counters and field_id == pynvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES:
            return gpu.pcie_rx_bytes
        return None

    def nvmlDeviceGetPcieReplayCounter(self, gpu: FakeGpu) -> int:
        self._call("nvmlDeviceGetPcieReplayCounter", gpu)
        return gpu.pcie_replays

    def nvmlDeviceGetCurrPcieLinkWidth(self, gpu: FakeGpu) -> int:
        self._call("nvmlDeviceGetCurrPcieLinkWidth", gpu)
        return gpu.pcie_width[0]

    def nvmlDeviceGetMaxPcieLinkWidth(self, gpu: FakeGpu) -> int:
        self._call("nvmlDeviceGetMaxPcieLinkWidth", gpu)
        return gpu.pcie_width[1]

    def nvmlDeviceGetCurrPcieLinkGeneration(self, gpu: FakeGpu) -> int:
        self._call("nvmlDeviceGetCurrPcieLinkGeneration", gpu)
        return gpu.pcie_generation[0]

    def nvmlDeviceGetMaxPcieLinkGeneration(self, gpu: FakeGpu) -> int:
        self._call("nvmlDeviceGetMaxPcieLinkGeneration", gpu)
        return gpu.pcie_generation[1]


def write_ib_tree(root: Any, hca: str = "mlx5_0", port: int = 1, **counters: int | str) -> Any:
    """A sysfs ``/sys/class/infiniband`` tree under ``root`` with one HCA port; returns the port folder.

    ``counters`` override the defaults; a value of ``""`` removes that file."""
    values: dict[str, int | str] = {
        "counters/port_xmit_data": 250_000_000,  # 4-byte words: 1 GB
        "counters/port_rcv_data": 500_000_000,
        "counters/port_xmit_packets": 1_000_000,
        "counters/port_rcv_packets": 2_000_000,
        "counters/symbol_error": 3,
        "counters/link_downed": 1,
        "counters/port_rcv_errors": 0,
        "hw_counters/out_of_buffer": 7,
        "state": "4: ACTIVE",
        "phys_state": "5: LinkUp",
        "rate": "400 Gb/sec (4X NDR)",
        "link_layer": "InfiniBand",
    }
    for key, value in counters.items():
        values[key.replace("__", "/")] = value
    folder = root / hca / "ports" / str(port)
    for rel, value in values.items():
        path = folder / rel
        if value == "":
            path.unlink(missing_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")
    return folder
