"""GPUs: utilisation, memory, power, energy, temperature, clocks, throttle reasons, per process."""

from __future__ import annotations

from typing import Final

from gpt_observatory.dashboards import events
from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards._grafana import Board, Panel, Row, q
from gpt_observatory.dashboards.boards._common import GPU_VAR, JOB_VAR
from gpt_observatory.dashboards.query import RANGE, agg, rate, sel
from gpt_observatory.telemetry import names

# Clock-event reasons that mean the GPU is held back (not idle, not a chosen clock setting).
THROTTLE_REASONS: Final = tuple(
    r for r in names.GPU_CLOCK_EVENT_REASONS if "slowdown" in r or r in ("sw_power_cap", "hw_power_brake_slowdown")
)
THERMAL_REASONS: Final = tuple(r for r in names.GPU_CLOCK_EVENT_REASONS if "thermal" in r)


def board() -> Board:
    gpu = f"{{{{{s.GPU_INDEX}}}}} {{{{{s.HW_NAME}}}}}"
    filt = (s.BY_JOB, s.BY_GPU)

    def per_gpu(metric: str, *matchers: str, fn: str = "max") -> str:
        return agg(fn, sel(metric, *filt, *matchers), (s.HW_ID, s.GPU_INDEX, s.HW_NAME))

    return Board(
        uid="observatory-gpu",
        title="Observatory / GPUs",
        description="NVML readings per GPU (OpenTelemetry hardware conventions); MIG instances are their own GPUs.",
        variables=(JOB_VAR, GPU_VAR),
        rows=(
            Row("Utilisation", (
                Panel("GPU utilisation", (q(per_gpu(s.gauge(names.HW_GPU_UTILIZATION), f'{s.GPU_TASK}="general"'),
                                            gpu),), unit="percentunit", width=8),
                Panel("Memory bandwidth utilisation",
                      (q(per_gpu(s.gauge(names.GPU_MEMORY_BANDWIDTH_UTILIZATION)), gpu),), unit="percentunit",
                      width=8),
                Panel("Encoder and decoder utilisation",
                      (q(agg("max", sel(s.gauge(names.HW_GPU_UTILIZATION), *filt, f'{s.GPU_TASK}=~"encoder|decoder"'),
                             (s.GPU_INDEX, s.GPU_TASK)), f"{{{{{s.GPU_INDEX}}}}} {{{{{s.GPU_TASK}}}}}"),),
                      unit="percentunit", width=8),
            )),
            Row("Memory", (
                Panel("Memory used and total", (
                    q(per_gpu(s.gauge(names.HW_GPU_MEMORY_USAGE)), f"used {gpu}"),
                    q(per_gpu(s.gauge(names.HW_GPU_MEMORY_LIMIT)), f"total {gpu}"),
                ), unit="bytes", width=8),
                Panel("Memory utilisation", (q(per_gpu(s.gauge(names.HW_GPU_MEMORY_UTILIZATION)), gpu),),
                      unit="percentunit", width=8),
                Panel("Memory per process",
                      (q(agg("max", sel(s.gauge(names.GPU_PROCESS_MEMORY), *filt),
                             (s.GPU_INDEX, s.PROCESS_PID, s.PROCESS_NAME)),
                         f"{{{{{s.GPU_INDEX}}}}} {{{{{s.PROCESS_NAME}}}}} ({{{{{s.PROCESS_PID}}}}})"),),
                      unit="bytes", width=8, stack=True),
            )),
            Row("Power and energy", (
                Panel("Power", (q(per_gpu(s.gauge(names.HW_POWER)), gpu),), unit="watt", width=8),
                Panel("Average power from the energy counter",
                      (q(rate(s.total(names.HW_ENERGY), *filt, by=(s.HW_ID, s.GPU_INDEX, s.HW_NAME)), gpu),),
                      unit="watt", width=8),
                Panel("Energy used in the time range",
                      (q(rate(s.total(names.HW_ENERGY), *filt, by=(s.GPU_INDEX,), window=RANGE, fn="increase"),
                         f"{{{{{s.GPU_INDEX}}}}}"),), kind="stat", unit="joule", width=8),
            )),
            Row("Thermals and clocks", (
                Panel("Temperature", (q(per_gpu(s.gauge(names.HW_TEMPERATURE)), gpu),), unit="celsius", width=8),
                Panel("Clocks", (q(agg("max", sel(s.gauge(names.GPU_CLOCK), *filt), (s.GPU_INDEX, s.CLOCK_DOMAIN)),
                                   f"{{{{{s.GPU_INDEX}}}}} {{{{{s.CLOCK_DOMAIN}}}}}"),), unit="hertz", width=8),
                Panel("Throttle reasons active",
                      (q(agg("max", sel(s.gauge(names.GPU_CLOCK_EVENT), *filt,
                                        f'{s.CLOCK_EVENT_REASON}=~"{"|".join(THROTTLE_REASONS)}"'),
                             (s.GPU_INDEX, s.CLOCK_EVENT_REASON)),
                         f"{{{{{s.GPU_INDEX}}}}} {{{{{s.CLOCK_EVENT_REASON}}}}}"),), kind="state", width=8,
                      description="1 while NVML reports the clock-event reason (power cap, thermal or hardware slowdown)."),
            )),
            Row("Errors", (
                Panel("GPU errors in the time range",
                      (q(rate(s.total(names.HW_ERRORS), *filt, by=(s.GPU_INDEX, s.ERROR_TYPE), window=RANGE,
                              fn="increase")),), kind="table", description="ECC corrected/uncorrected and XID errors."),
                Panel("NVML readings dropped",
                      (q(rate(s.total(names.GPU_READ_ERRORS), *filt, by=(s.HW_ID, s.NVML_FUNCTION)),
                         f"{{{{{s.HW_ID}}}}} {{{{{s.NVML_FUNCTION}}}}}"),), needs=events.GPU_READ_ERROR),
            )),
        ),
    )
