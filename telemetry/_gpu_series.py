"""GPU samples as OpenTelemetry series: plain conversion functions, and the observable
instruments that read the converted points (never NVML) when a reader collects."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter

from gpt_observatory.telemetry import names

if TYPE_CHECKING:
    from gpt_observatory.telemetry._nvml import GpuInfo, GpuSample

Point = tuple[float, dict[str, Any]]
Points = dict[str, list[Point]]
"""Metric name -> (value, attributes) observations."""

GPU_METRICS: tuple[names.Metric, ...] = (
    names.HW_GPU_UTILIZATION,
    names.HW_GPU_MEMORY_USAGE,
    names.HW_GPU_MEMORY_LIMIT,
    names.HW_GPU_MEMORY_UTILIZATION,
    names.HW_POWER,
    names.HW_ENERGY,
    names.HW_TEMPERATURE,
    names.HW_ERRORS,
    names.GPU_CLOCK,
    names.GPU_CLOCK_EVENT,
    names.GPU_MEMORY_BANDWIDTH_UTILIZATION,
    names.GPU_PROCESS_MEMORY,
    names.GPU_READ_ERRORS,
)


def device_attributes(gpu: GpuInfo) -> dict[str, Any]:
    """Attributes every series of ``gpu`` carries (``hw.id`` is the GPU or MIG UUID)."""
    attrs: dict[str, Any] = {
        names.HW_ID: gpu.uuid,
        names.HW_NAME: gpu.name,
        names.HW_TYPE: names.HW_TYPE_GPU,
        names.GPU_INDEX: gpu.index,
    }
    if gpu.parent_uuid is not None:
        attrs[names.HW_PARENT] = gpu.parent_uuid
        attrs[names.GPU_MIG] = gpu.mig_profile or ""
    return attrs


def clock_event_reasons(bitmask: int) -> list[str]:
    """Names of the clock-event (throttle) reasons set in an NVML reasons bitmask."""
    return [reason for bit, reason in enumerate(names.GPU_CLOCK_EVENT_REASONS) if bitmask >> bit & 1]


def otel_points(samples: Sequence[GpuSample], read_errors: Mapping[tuple[str, str, str], int] | None = None) -> Points:
    """Convert samples (NVML units) to OTel observations (semconv units: ratios, bytes, W, J, Hz).

    A reading that is ``None`` (failed, unsupported, or not reported as on MIG) yields no point:
    absent, never 0. ``read_errors`` maps (hw.id, NVML function, error) to a running count.
    """
    out: Points = {m.name: [] for m in GPU_METRICS}

    def add(metric: names.Metric, value: float | None, attrs: dict[str, Any]) -> None:
        if value is not None:
            out[metric.name].append((value, attrs))

    for s in samples:
        base = device_attributes(s.gpu)
        for task, pct in zip(names.HW_GPU_TASKS, (s.utilization_pct, s.encoder_pct, s.decoder_pct), strict=True):
            add(names.HW_GPU_UTILIZATION, _ratio(pct), {**base, names.HW_GPU_TASK: task})
        add(names.GPU_MEMORY_BANDWIDTH_UTILIZATION, _ratio(s.memory_activity_pct), base)
        total = s.gpu.memory_total_bytes
        add(names.HW_GPU_MEMORY_USAGE, s.memory_used_bytes, base)
        add(names.HW_GPU_MEMORY_LIMIT, total, base)
        if total and s.memory_used_bytes is not None:
            add(names.HW_GPU_MEMORY_UTILIZATION, s.memory_used_bytes / total, base)
        add(names.HW_POWER, None if s.power_mw is None else s.power_mw / 1000, base)
        add(names.HW_ENERGY, None if s.energy_mj is None else s.energy_mj / 1000, base)
        add(names.HW_TEMPERATURE, s.temperature_c, base)
        clocks = (s.graphics_clock_mhz, s.sm_clock_mhz, s.memory_clock_mhz)
        for domain, mhz in zip(names.GPU_CLOCK_DOMAINS, clocks, strict=True):
            add(names.GPU_CLOCK, None if mhz is None else mhz * 1_000_000, {**base, names.GPU_CLOCK_DOMAIN: domain})
        if s.clock_event_reasons is not None:
            for bit, reason in enumerate(names.GPU_CLOCK_EVENT_REASONS):
                active = s.clock_event_reasons >> bit & 1
                add(names.GPU_CLOCK_EVENT, active, {**base, names.GPU_CLOCK_EVENT_REASON: reason})
        errors = (s.ecc_corrected, s.ecc_uncorrected, s.xid_errors)
        for error_type, count in zip(names.HW_GPU_ERROR_TYPES, errors, strict=True):
            add(names.HW_ERRORS, count, {**base, names.HW_ERROR_TYPE: error_type})
        for p in s.processes or ():
            attrs = {**base, names.PROCESS_PID: p.pid, names.PROCESS_NAME: p.name}
            add(names.GPU_PROCESS_MEMORY, p.used_bytes, attrs)
    for (uuid, function, error), count in (read_errors or {}).items():
        attrs = {names.HW_ID: uuid, names.HW_TYPE: names.HW_TYPE_GPU, names.GPU_NVML_FUNCTION: function}
        add(names.GPU_READ_ERRORS, count, {**attrs, names.HW_ERROR_TYPE: error})
    return out


def _ratio(pct: float | None) -> float | None:
    return None if pct is None else pct / 100


class GpuInstruments:
    """One observable instrument per metric of ``metrics`` (the GPU ones by default; the interconnect
    collector passes its own); callbacks return the latest converted points."""

    def __init__(
        self,
        points: Callable[[], Points],
        meter_provider: MeterProvider | None = None,
        metrics: Iterable[names.Metric] | None = None,
        scope: str = __name__,
    ) -> None:
        self._points = points
        meter = get_meter(scope, meter_provider=meter_provider, schema_url=names.SEMCONV_SCHEMA_URL)
        create = {
            "gauge": meter.create_observable_gauge,
            "counter": meter.create_observable_counter,
            "updowncounter": meter.create_observable_up_down_counter,
        }
        self.instruments = [
            create[m.kind](m.name, callbacks=[self._callback(m.name)], unit=m.unit, description=m.description)
            for m in (GPU_METRICS if metrics is None else metrics)
        ]

    def _callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, attrs) for value, attrs in self._points().get(name, ())]

        return observe
