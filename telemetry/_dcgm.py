"""DCGM-exporter-compatible Prometheus series from GPU samples (opt-in: ``gpu_dcgm_names``).

Names, units and labels follow NVIDIA dcgm-exporter's defaults (``names.DCGM_SERIES``), so
existing DCGM dashboards work unchanged. A prometheus_client custom collector: values are
produced from the cached snapshot when scraped; NVML is never called here.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from gpt_observatory.telemetry import names

if TYPE_CHECKING:
    from gpt_observatory.telemetry._nvml import GpuInfo, GpuSample

_MIB = 1 << 20


def dcgm_labels(gpu: GpuInfo, hostname: str) -> dict[str, str]:
    """dcgm-exporter's labels; a MIG instance carries its parent's UUID plus GPU_I_PROFILE/GPU_I_ID."""
    values = (
        str(gpu.index),
        gpu.parent_uuid or gpu.uuid,
        gpu.pci_bus_id,
        f"nvidia{gpu.index}",
        gpu.name.split(" MIG ")[0],
        hostname,
    )
    labels = dict(zip(names.DCGM_LABELS, values, strict=True))
    if gpu.parent_uuid is not None:
        instance = "" if gpu.mig_instance is None else str(gpu.mig_instance)
        labels.update(zip(names.DCGM_MIG_LABELS, (gpu.mig_profile or "", instance), strict=True))
    return labels


def dcgm_values(s: GpuSample) -> dict[str, float | None]:
    """Each DCGM series' value for one sample, in DCGM's units (MHz, C, W, mJ, %, MiB)."""
    return {
        "DCGM_FI_DEV_SM_CLOCK": s.sm_clock_mhz,
        "DCGM_FI_DEV_MEM_CLOCK": s.memory_clock_mhz,
        "DCGM_FI_DEV_GPU_TEMP": s.temperature_c,
        "DCGM_FI_DEV_POWER_USAGE": None if s.power_mw is None else s.power_mw / 1000,
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": s.energy_mj,
        "DCGM_FI_DEV_GPU_UTIL": s.utilization_pct,
        "DCGM_FI_DEV_MEM_COPY_UTIL": s.memory_activity_pct,
        "DCGM_FI_DEV_ENC_UTIL": s.encoder_pct,
        "DCGM_FI_DEV_DEC_UTIL": s.decoder_pct,
        "DCGM_FI_DEV_XID_ERRORS": None if s.xid_errors is None else (s.last_xid or 0),
        "DCGM_FI_DEV_FB_FREE": None if s.memory_free_bytes is None else s.memory_free_bytes // _MIB,
        "DCGM_FI_DEV_FB_USED": None if s.memory_used_bytes is None else s.memory_used_bytes // _MIB,
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": s.ecc_corrected,
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": s.ecc_uncorrected,
    }


def _family(name: str) -> Metric:
    kind, help_text = names.DCGM_SERIES[name]
    # prometheus_client writes a counter's HELP/TYPE as NAME_total, which would no longer match
    # dcgm-exporter's un-suffixed counter names; "unknown" keeps the sample name exact.
    return Metric(name, help_text, "gauge" if kind == "gauge" else "unknown")


def dcgm_families(samples: Sequence[GpuSample], hostname: str) -> list[Metric]:
    """The DCGM metric families for ``samples``; readings that are ``None`` are left out."""
    families = {name: _family(name) for name in names.DCGM_SERIES}
    for s in samples:
        labels = dcgm_labels(s.gpu, hostname)
        for name, value in dcgm_values(s).items():
            if value is not None:
                families[name].add_sample(name, labels, float(value))
    return [f for f in families.values() if f.samples]


class DcgmCollector:
    """prometheus_client collector exposing the cached GPU snapshot under DCGM names."""

    def __init__(self, snapshot: Callable[[], Sequence[GpuSample]], hostname: str | None = None) -> None:
        self._snapshot = snapshot
        self._hostname = hostname or socket.gethostname()

    def describe(self) -> Iterable[Metric]:
        return [_family(name) for name in names.DCGM_SERIES]

    def collect(self) -> Iterable[Metric]:
        return dcgm_families(self._snapshot(), self._hostname)
