"""GPU readings for the demo summary, from the ``telemetry.gpu`` collector's snapshot.

The collector ``telemetry.configure()`` started in this process is used when there is one;
otherwise a private one is started once, only to learn why there is no GPU (it says so in its
``status``). Energy per output token is the energy counter's increase over the traffic window
divided by the output tokens the gateway counted in that window, never a per-request NVML read.
"""

from __future__ import annotations

from typing import Any

from gpt_observatory import telemetry


class GpuProbe:
    """Readings before and after the traffic; ``None`` collector: no GPU, with the reason."""

    def __init__(self) -> None:
        from opentelemetry.metrics import NoOpMeterProvider

        from gpt_observatory.telemetry.gpu import GpuCollector

        handle = telemetry.current()
        found = [e for e in (handle.extras if handle else ()) if isinstance(e, GpuCollector)]
        self._own = not found
        self.collector: Any = found[0] if found else GpuCollector(meter_provider=NoOpMeterProvider())
        self.reason: str | None = None
        if self._own and not self.collector.start(background=False):
            self.reason, self.collector = self.collector.status, None
        self._energy_before = self._energy_mj()

    def _energy_mj(self) -> int | None:
        if self.collector is None:
            return None
        values = [s.energy_mj for s in self.collector.sample(slow=True) if s.gpu.parent_uuid is None]
        return sum(v for v in values if v is not None) if values and None not in values else None

    def readings(self, output_tokens: float) -> dict[str, Any]:
        """Device readings now, and energy per output token since this probe was made."""
        if self.collector is None:
            return {"available": False, "reason": f"no GPU: {self.reason}", "devices": [],
                    "energy_per_output_token_j": None}
        energy_after = self._energy_mj()
        devices = [
            {
                "index": s.gpu.index,
                "name": s.gpu.name,
                "uuid": s.gpu.uuid,
                "utilization_pct": s.utilization_pct,
                "memory_used_mib": round(s.memory_used_bytes / 2**20) if s.memory_used_bytes is not None else None,
                "memory_total_mib": round(s.gpu.memory_total_bytes / 2**20) if s.gpu.memory_total_bytes else None,
                "power_w": s.power_mw / 1000 if s.power_mw is not None else None,
                "temperature_c": s.temperature_c,
            }
            for s in self.collector.snapshot()
        ]
        per_token = None
        if energy_after is not None and self._energy_before is not None and output_tokens:
            per_token = (energy_after - self._energy_before) / 1000 / output_tokens
        if self._own:
            self.collector.stop()
        return {"available": True, "reason": None, "devices": devices, "energy_per_output_token_j": per_token}
