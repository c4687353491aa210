"""Raw NVML access: device discovery (GPUs and MIG instances), the tables of getter calls
each device answers, and the plain dataclasses raw results become.

Nothing here runs at import; ``pynvml`` is imported on first use (it takes ~40 ms).
"""

from __future__ import annotations

import ctypes
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from loguru import logger


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """Static facts about one GPU or MIG instance, read once at start."""

    index: int  # NVML index (the parent GPU's, for a MIG instance)
    uuid: str  # GPU-... or MIG-...
    name: str
    memory_total_bytes: int | None
    pci_bus_id: str = ""
    parent_uuid: str | None = None  # set on a MIG instance
    mig_profile: str | None = None  # e.g. "1g.10gb"
    mig_instance: int | None = None  # GPU instance id
    reports_utilization: bool = True  # False in MIG mode: NVML reports no utilisation there


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    """GPU memory one process holds on one device."""

    pid: int  # as NVML reports it (the host's PID namespace)
    name: str
    used_bytes: int | None


@dataclass(slots=True)  # not frozen: a frozen init costs ~2 µs of a ~30 µs fast-path sample (bench/gpu_sampler.py)
class GpuSample:
    """One reading of one device in NVML's units. ``None``: not read (failed, unsupported, not reported).

    Published in the collector's snapshot and shared by every reader: treat it as read-only."""

    gpu: GpuInfo
    timestamp: float
    utilization_pct: int | None = None
    memory_activity_pct: int | None = None  # time device memory was read or written
    encoder_pct: int | None = None
    decoder_pct: int | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    power_mw: int | None = None
    temperature_c: int | None = None
    graphics_clock_mhz: int | None = None
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None
    clock_event_reasons: int | None = None  # NVML bitmask
    energy_mj: int | None = None  # slow: since the driver loaded
    ecc_corrected: int | None = None  # slow: volatile counts
    ecc_uncorrected: int | None = None
    xid_errors: int | None = None  # XID events seen since start (None: events unavailable)
    last_xid: int | None = None
    processes: tuple[ProcessMemory, ...] | None = None  # slow


class Reading(NamedTuple):
    """One NVML getter call, ``fn(handle, *args)``, stored under ``key``."""

    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


def read(
    handle: Any,
    uuid: str,
    table: tuple[Reading, ...],
    errors: Counter[tuple[str, str, str]],
) -> tuple[dict[str, Any], tuple[Reading, ...]]:
    """Make every call in ``table``. A failed call drops only its own reading and is counted in
    ``errors``; a call the device does not support is also left out of the returned table."""
    import pynvml

    values: dict[str, Any] = {}
    unsupported: list[str] = []
    for key, fn, args in table:
        try:
            values[key] = fn(handle, *args)
        except pynvml.NVMLError as exc:  # the boundary for NVML: drop this reading, count it
            errors[(uuid, fn.__name__, type(exc).__name__)] += 1
            if exc.value in (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND):
                unsupported.append(key)
    if unsupported:
        logger.debug("GPU {}: NVML does not support {}; no longer read", uuid, unsupported)
        table = tuple(r for r in table if r.key not in unsupported)
    return values, table


def build_sample(
    info: GpuInfo,
    timestamp: float,
    fast: dict[str, Any],
    slow: dict[str, Any],
    xid: tuple[int | None, int | None] = (None, None),
) -> GpuSample:
    """Turn raw NVML results (structs, lists, ints) into a :class:`GpuSample`."""
    util, mem = fast.get("utilization"), fast.get("memory")
    enc, dec = fast.get("encoder"), fast.get("decoder")
    return GpuSample(
        gpu=info,
        timestamp=timestamp,
        utilization_pct=None if util is None else util.gpu,
        memory_activity_pct=None if util is None else util.memory,
        encoder_pct=None if enc is None else enc[0],
        decoder_pct=None if dec is None else dec[0],
        memory_used_bytes=None if mem is None else mem.used,
        memory_free_bytes=None if mem is None else mem.free,
        power_mw=fast.get("power"),
        temperature_c=fast.get("temperature"),
        graphics_clock_mhz=fast.get("graphics_clock"),
        sm_clock_mhz=fast.get("sm_clock"),
        memory_clock_mhz=fast.get("memory_clock"),
        clock_event_reasons=fast.get("clock_events"),
        energy_mj=slow.get("energy"),
        ecc_corrected=slow.get("ecc_corrected"),
        ecc_uncorrected=slow.get("ecc_uncorrected"),
        xid_errors=xid[0],
        last_xid=xid[1],
        processes=slow.get("processes"),
    )


@dataclass(slots=True)
class Device:
    """A device's handle, static facts, the calls it answers, and its latest slow readings."""

    info: GpuInfo
    handle: Any
    fast: tuple[Reading, ...]
    slow: tuple[Reading, ...]
    slow_values: dict[str, Any] = field(default_factory=dict)
    xid: tuple[int | None, int | None] = (None, None)


def discover(nvml: Any) -> list[Device]:
    """Every GPU NVML lists, each followed by its MIG instances when MIG is on."""
    devices: list[Device] = []
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            devices.extend(_describe(nvml, index, nvml.nvmlDeviceGetHandleByIndex(index)))
        except nvml.NVMLError as exc:
            logger.warning("GPU {} skipped: NVML could not describe it ({})", index, exc)
    return devices


def _describe(nvml: Any, index: int, handle: Any) -> list[Device]:
    mig = try_call(nvml.nvmlDeviceGetMigMode, handle, default=[0, 0])[0] == nvml.NVML_DEVICE_MIG_ENABLE
    memory, total = _memory_reading(nvml, handle)
    pci = try_call(nvml.nvmlDeviceGetPciInfo, handle)
    info = GpuInfo(
        index,
        nvml.nvmlDeviceGetUUID(handle),
        nvml.nvmlDeviceGetName(handle),
        total,
        _text(pci.busId) if pci is not None else "",
        reports_utilization=not mig,
    )
    fast = [*memory]
    if not mig:  # in MIG mode NVML reports no utilisation: not read, not exported as 0
        fast += [
            Reading("utilization", nvml.nvmlDeviceGetUtilizationRates),
            Reading("encoder", nvml.nvmlDeviceGetEncoderUtilization),
            Reading("decoder", nvml.nvmlDeviceGetDecoderUtilization),
        ]
    fast += [
        Reading("power", nvml.nvmlDeviceGetPowerUsage),
        Reading("temperature", nvml.nvmlDeviceGetTemperature, (nvml.NVML_TEMPERATURE_GPU,)),
        Reading("graphics_clock", nvml.nvmlDeviceGetClockInfo, (nvml.NVML_CLOCK_GRAPHICS,)),
        Reading("sm_clock", nvml.nvmlDeviceGetClockInfo, (nvml.NVML_CLOCK_SM,)),
        Reading("memory_clock", nvml.nvmlDeviceGetClockInfo, (nvml.NVML_CLOCK_MEM,)),
    ]
    fast += _first_working(
        handle,
        [
            Reading("clock_events", nvml.nvmlDeviceGetCurrentClocksEventReasons),
            Reading("clock_events", nvml.nvmlDeviceGetCurrentClocksThrottleReasons),
        ],
    )
    slow = [
        Reading("energy", nvml.nvmlDeviceGetTotalEnergyConsumption),
        Reading(
            "ecc_corrected",
            nvml.nvmlDeviceGetTotalEccErrors,
            (nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, nvml.NVML_VOLATILE_ECC),
        ),
        Reading(
            "ecc_uncorrected",
            nvml.nvmlDeviceGetTotalEccErrors,
            (nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC),
        ),
    ]
    if not mig:  # in MIG mode each instance lists its own processes
        slow += _processes_reading(nvml, handle)
    devices = [Device(info, handle, tuple(fast), tuple(slow))]
    if mig:
        devices += _mig_instances(nvml, info, handle)
    return devices


def _mig_instances(nvml: Any, parent: GpuInfo, parent_handle: Any) -> list[Device]:
    out = []
    for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(parent_handle)):
        handle = try_call(nvml.nvmlDeviceGetMigDeviceHandleByIndex, parent_handle, slot)
        if handle is None:  # an empty slot
            continue
        name = nvml.nvmlDeviceGetName(handle)
        memory, total = _memory_reading(nvml, handle)
        info = GpuInfo(
            parent.index,
            nvml.nvmlDeviceGetUUID(handle),
            name,
            total,
            parent.pci_bus_id,
            parent_uuid=parent.uuid,
            mig_profile=name.rsplit(" MIG ", 1)[-1] if " MIG " in name else "",
            mig_instance=try_call(nvml.nvmlDeviceGetGpuInstanceId, handle),
            reports_utilization=False,
        )
        out.append(Device(info, handle, tuple(memory), tuple(_processes_reading(nvml, handle))))
    return out


def _memory_reading(nvml: Any, handle: Any) -> tuple[list[Reading], int | None]:
    """The v2 memory call where the driver has it (it separates reserved memory), else v1; and the total."""
    for reading in (
        Reading("memory", nvml.nvmlDeviceGetMemoryInfo, (nvml.nvmlMemory_v2,)),
        Reading("memory", nvml.nvmlDeviceGetMemoryInfo),
    ):
        info = try_call(reading.fn, handle, *reading.args)
        if info is not None:
            return [reading], int(info.total)
    return [], None


def _processes_reading(nvml: Any, handle: Any) -> list[Reading]:
    return _first_working(
        handle,
        [
            Reading("processes", nvml.nvmlDeviceGetComputeRunningProcesses_v3),
            Reading("processes", nvml.nvmlDeviceGetComputeRunningProcesses_v2),
        ],
    )


def _first_working(handle: Any, candidates: list[Reading]) -> list[Reading]:
    """The first call this device and driver answer (newer API first), probed once at start."""
    for reading in candidates:
        if try_call(reading.fn, handle, *reading.args, default=_FAILED) is not _FAILED:
            return [reading]
    return []


_FAILED = object()


def try_call(fn: Callable[..., Any], *args: Any, default: Any = None) -> Any:
    """A start-up or shutdown NVML call whose failure only means "not available"."""
    import pynvml

    try:
        return fn(*args)
    except pynvml.NVMLError:
        return default


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def address(handle: Any) -> int | None:
    """A device handle's pointer value (event data names devices by handle)."""
    return ctypes.cast(handle, ctypes.c_void_p).value
