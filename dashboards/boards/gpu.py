"""GPUs: utilisation, memory, power, energy, temperature, clocks, throttle reasons, per process;
their links (NVLink per link, PCIe) and the host's InfiniBand ports."""

from __future__ import annotations

from typing import Final

from gpt_observatory.dashboards import events
from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards._grafana import Board, Panel, Row, q
from gpt_observatory.dashboards.boards._common import GPU_VAR, JOB_VAR
from gpt_observatory.dashboards.query import RANGE, agg, rate, sel
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.names import prometheus_label as label

# Clock-event reasons that mean the GPU is held back (not idle, not a chosen clock setting).
THROTTLE_REASONS: Final = tuple(
    r for r in names.GPU_CLOCK_EVENT_REASONS if "slowdown" in r or r in ("sw_power_cap", "hw_power_brake_slowdown")
)
THERMAL_REASONS: Final = tuple(r for r in names.GPU_CLOCK_EVENT_REASONS if "thermal" in r)

LINK_TYPE: Final = label(names.GPU_LINK_TYPE)
NVLINK_LINK: Final = label(names.GPU_NVLINK_LINK)
DIRECTION: Final = label(names.NETWORK_IO_DIRECTION)
PCIE_BOUND: Final = label(names.GPU_PCIE_LINK_BOUND)
HW_TYPE: Final = label(names.HW_TYPE)
IB_RATE: Final = label(names.IB_RATE)
GPU_LINK_ERRORS: Final = "|".join(names.GPU_LINK_ERROR_TYPES)


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
            _links_row(gpu, filt),
            _infiniband_row(),
        ),
    )


def _links_row(gpu: str, filt: tuple[str, ...]) -> Row:
    """NVLink and PCIe, sampled every ``interconnect_interval_s`` (DCGM field names in the descriptions)."""
    io = s.total(names.HW_GPU_IO)
    per_dir = (s.GPU_INDEX, s.HW_NAME, DIRECTION)
    return Row("GPU links (NVLink, PCIe)", (
        Panel("NVLink throughput", (q(rate(io, *filt, f'{LINK_TYPE}="nvlink"', by=per_dir),
                                      f"{gpu} {{{{{DIRECTION}}}}}"),), unit="Bps", width=8,
              description="Data bytes over all NVLink links (DCGM: DCGM_FI_PROF_NVLINK_TX_BYTES, _RX_BYTES)."),
        Panel("PCIe throughput", (q(rate(io, *filt, f'{LINK_TYPE}="pcie"', by=per_dir),
                                    f"{gpu} {{{{{DIRECTION}}}}}"),), unit="Bps", width=8,
              description="PCIe bytes (DCGM: DCGM_FI_PROF_PCIE_TX_BYTES, DCGM_FI_PROF_PCIE_RX_BYTES)."),
        Panel("NVLink links down", (q(agg("sum", f"1 - {sel(s.gauge(names.GPU_NVLINK_UP), *filt)}",
                                          (s.GPU_INDEX, s.HW_NAME)), gpu),), width=8,
              description="Links NVML reports inactive, per GPU; 0 when every link is up."),
        Panel("PCIe link width, current and max",
              (q(agg("max", sel(s.gauge(names.GPU_PCIE_LINK_WIDTH), *filt), (s.GPU_INDEX, PCIE_BOUND)),
                 f"{{{{{s.GPU_INDEX}}}}} {{{{{PCIE_BOUND}}}}}"),), width=8,
              description="A current width below the max is a GPU trained at fewer lanes (reseat or replace it). "
                          "DCGM: DCGM_FI_DEV_PCIE_LINK_WIDTH, DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH."),
        Panel("PCIe generation, current and max",
              (q(agg("max", sel(s.gauge(names.GPU_PCIE_LINK_GENERATION), *filt), (s.GPU_INDEX, PCIE_BOUND)),
                 f"{{{{{s.GPU_INDEX}}}}} {{{{{PCIE_BOUND}}}}}"),), width=8,
              description="The current generation drops while the GPU idles (power saving): only the width "
                          "says a link is degraded. DCGM: DCGM_FI_DEV_PCIE_LINK_GEN, DCGM_FI_DEV_PCIE_MAX_LINK_GEN."),
        Panel("PCIe links downtrained", (q(agg("max", sel(s.gauge(names.GPU_PCIE_LINK_DOWNTRAINED), *filt),
                                               (s.GPU_INDEX, s.HW_NAME)), gpu),), kind="state", width=8),
        Panel("NVLink and PCIe errors in the time range",
              (q(rate(s.total(names.HW_ERRORS), *filt, f'{s.ERROR_TYPE}=~"{GPU_LINK_ERRORS}"',
                      by=(s.GPU_INDEX, s.ERROR_TYPE), window=RANGE, fn="increase")),), kind="table", width=24,
              description="NVLink replay, recovery and CRC counters summed over links, and PCIe replays. DCGM: "
                          "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL, _RECOVERY_ERROR_COUNT_TOTAL, "
                          "_CRC_FLIT_ERROR_COUNT_TOTAL, _CRC_DATA_ERROR_COUNT_TOTAL, DCGM_FI_DEV_PCIE_REPLAY_COUNTER."),
    ))


def _infiniband_row() -> Row:
    """HCA ports from sysfs: one series per port (hw.id = "<hca>/<port>")."""
    port, by_port = f"{{{{{s.HW_ID}}}}} {{{{{DIRECTION}}}}}", (s.HW_ID, DIRECTION)
    network = (s.BY_JOB, f'{HW_TYPE}="{names.HW_TYPE_NETWORK}"')
    return Row("InfiniBand", (
        Panel("Port throughput", (q(rate(s.total(names.HW_NETWORK_IO), *network, by=by_port), port),),
              unit="Bps", width=8, description="port_xmit_data and port_rcv_data (4-byte words) as bytes."),
        Panel("Port packets", (q(rate(s.total(names.HW_NETWORK_PACKETS), *network, by=by_port), port),),
              unit="pps", width=8),
        Panel("Port state", (q(agg("max", sel(s.gauge(names.HW_NETWORK_UP), *network), (s.HW_ID, IB_RATE)),
                               f"{{{{{s.HW_ID}}}}} {{{{{IB_RATE}}}}}"),), kind="state", width=8,
              description="1 while the port is ACTIVE; the legend shows its rate."),
        Panel("Port errors in the time range",
              (q(rate(s.total(names.HW_ERRORS), *network, by=(s.HW_ID, s.ERROR_TYPE), window=RANGE,
                      fn="increase")),), kind="table", width=24,
              description="counters/ (symbol errors, link downed, discards...) and hw_counters/ (out_of_buffer...)."),
    ))
