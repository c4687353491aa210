"""Interconnect telemetry (telemetry/_interconnect.py, telemetry/_infiniband.py).

NVLink and PCIe through the GPU collector with a fake NVML (pynvml's structs and errors, GPUs as
data), InfiniBand from a fake sysfs tree; the series on a real Prometheus, and the GPU board's
interconnect panels evaluated there.
"""

from __future__ import annotations

import time
from pathlib import Path

import pynvml
import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader, Sum
from prometheus_client import CollectorRegistry, start_http_server

from gpt_observatory.dashboards.verify import evaluate, live_queries
from gpt_observatory.telemetry import _infiniband, names
from gpt_observatory.telemetry.gpu import GpuCollector
from gpt_observatory.telemetry.settings import Settings
from tests import components
from tests.telemetry.fake_nvml import FakeGpu, FakeNvml, write_ib_tree

INTERCONNECT_CALLS = ("NvLink", "Pcie", "FieldValues")


def values(points: dict, metric: names.Metric, **attrs) -> list[float]:
    return [v for v, a in points[metric.name] if all(a.get(k) == want for k, want in attrs.items())]


def start(nvml: FakeNvml, ib_root: Path, interval_s: float = 10.0, background: bool = False, **kw) -> GpuCollector:
    collector = GpuCollector(nvml=nvml, interconnect_interval_s=interval_s, infiniband_root=ib_root,
                             meter_provider=kw.pop("meter_provider", NoOpMeterProvider()), **kw)  # fmt: skip
    assert collector.start(background=background), collector.status
    return collector


@pytest.fixture
def nvlink_gpu() -> FakeGpu:
    return FakeGpu("GPU-h200-0", nvlinks=18, links_down=frozenset({17}),
                   nvlink_errors={(3, pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT): 5,
                                  (3, pynvml.NVML_NVLINK_ERROR_DL_REPLAY): 2},
                   pcie_replays=4)  # fmt: skip


# --------------------------------------------------------------------------- NVLink and PCIe (fake NVML)
def test_nvlink_per_link_throughput_state_and_error_counters(nvlink_gpu, tmp_path):
    collector = start(FakeNvml([nvlink_gpu]), tmp_path / "no-ib")
    points = collector.interconnect.points()
    collector.stop()
    nvlink = {names.GPU_LINK_TYPE: "nvlink"}
    assert len(values(points, names.HW_GPU_IO, **nvlink, **{names.NETWORK_IO_DIRECTION: "transmit"})) == 18
    link3 = {names.GPU_NVLINK_LINK: 3}
    assert values(points, names.HW_GPU_IO, **nvlink, **link3, **{names.NETWORK_IO_DIRECTION: "transmit"}) == [1 << 20]
    assert values(points, names.HW_GPU_IO, **nvlink, **link3, **{names.NETWORK_IO_DIRECTION: "receive"}) == [2 << 20]
    up = {a[names.GPU_NVLINK_LINK]: v for v, a in points[names.GPU_NVLINK_UP.name]}
    assert up == {**dict.fromkeys(range(17), 1), 17: 0}
    assert values(points, names.HW_ERRORS, **link3, **{names.HW_ERROR_TYPE: "nvlink_crc_flit"}) == [5]
    assert values(points, names.HW_ERRORS, **link3, **{names.HW_ERROR_TYPE: "nvlink_replay"}) == [2]
    assert values(points, names.HW_ERRORS, **link3, **{names.HW_ERROR_TYPE: "nvlink_recovery"}) == [0]
    assert len(values(points, names.HW_ERRORS, **{names.HW_ERROR_TYPE: "nvlink_crc_data"})) == 18
    assert values(points, names.HW_ERRORS, **{names.HW_ERROR_TYPE: "pcie_replay"}) == [4]
    pcie = {names.GPU_LINK_TYPE: "pcie"}
    assert values(points, names.HW_GPU_IO, **pcie, **{names.NETWORK_IO_DIRECTION: "receive"}) == [7 << 30]
    for _, attrs in points[names.HW_GPU_IO.name]:
        assert attrs[names.HW_ID] == "GPU-h200-0" and attrs[names.HW_TYPE] == "gpu"
    assert collector.read_errors == {} and collector.interconnect is not None


def test_a_gpu_trained_at_fewer_pcie_lanes_than_its_max_is_flagged(tmp_path):
    healthy = FakeGpu("GPU-ok", pcie_width=(16, 16), pcie_generation=(2, 5))  # gen 2: idling, not degraded
    narrow = FakeGpu("GPU-x8", pcie_width=(8, 16), pcie_generation=(5, 5))
    collector = start(FakeNvml([healthy, narrow]), tmp_path)
    points = collector.interconnect.points()
    collector.stop()
    downtrained = {a[names.HW_ID]: v for v, a in points[names.GPU_PCIE_LINK_DOWNTRAINED.name]}
    assert downtrained == {"GPU-ok": 0, "GPU-x8": 1}
    width = {(a[names.HW_ID], a[names.GPU_PCIE_LINK_BOUND]): v for v, a in points[names.GPU_PCIE_LINK_WIDTH.name]}
    assert width == {("GPU-ok", "current"): 16, ("GPU-ok", "max"): 16, ("GPU-x8", "current"): 8, ("GPU-x8", "max"): 16}
    gen = {(a[names.HW_ID], a[names.GPU_PCIE_LINK_BOUND]): v for v, a in points[names.GPU_PCIE_LINK_GENERATION.name]}
    assert gen[("GPU-ok", "current")] == 2 and gen[("GPU-ok", "max")] == 5


def test_unsupported_nvml_calls_and_fields_are_asked_once_then_never_again(tmp_path):
    gpu = FakeGpu("GPU-old", nvlinks=4, pcie_counters=False,
                  unsupported=frozenset({"nvmlDeviceGetNvLinkErrorCounter", "nvmlDeviceGetPcieReplayCounter"}))  # fmt: skip
    pcie_only = FakeGpu("GPU-pcie", nvlinks=0)
    nvml = FakeNvml([gpu, pcie_only])
    collector = start(nvml, tmp_path)
    probes = nvml.calls["nvmlDeviceGetNvLinkState"]
    assert probes == 2 * pynvml.NVML_NVLINK_MAX_LINKS + 4  # every possible link probed once, then 4 states read
    first = dict(nvml.calls)
    for _ in range(3):
        collector.interconnect.sample()
    points = collector.interconnect.points()
    errors = collector.interconnect.read_errors
    collector.stop()
    assert nvml.calls["nvmlDeviceGetNvLinkErrorCounter"] == first["nvmlDeviceGetNvLinkErrorCounter"] == 4 * 4
    assert first["nvmlDeviceGetPcieReplayCounter"] == 2  # once per GPU; then only GPU-pcie's, once a sample
    assert nvml.calls["nvmlDeviceGetPcieReplayCounter"] == 2 + 3
    assert nvml.calls["nvmlDeviceGetNvLinkState"] == probes + 3 * 4  # only the 4 real links, per sample
    assert nvml.calls["nvmlDeviceGetFieldValues"] == 2 * 4  # one call per GPU per sample
    assert errors[("GPU-old", "nvmlDeviceGetNvLinkErrorCounter", "NVMLError_NotSupported")] == 16
    assert errors[("GPU-old", "nvmlDeviceGetFieldValues:197", "NVMLError_NotSupported")] == 1  # PCIe TX bytes
    # what is supported is still read: GPU-old's NVLink bytes and state, GPU-pcie's PCIe bytes and width
    assert len(values(points, names.HW_GPU_IO, **{names.HW_ID: "GPU-old", names.GPU_LINK_TYPE: "nvlink"})) == 8
    assert values(points, names.HW_GPU_IO, **{names.HW_ID: "GPU-old", names.GPU_LINK_TYPE: "pcie"}) == []
    assert len(values(points, names.HW_GPU_IO, **{names.HW_ID: "GPU-pcie", names.GPU_LINK_TYPE: "pcie"})) == 2
    assert values(points, names.GPU_NVLINK_UP, **{names.HW_ID: "GPU-pcie"}) == []
    assert values(points, names.HW_ERRORS, **{names.HW_ID: "GPU-old"}) == []
    read_errors = {a[names.INTERCONNECT_SOURCE]: v for v, a in points[names.INTERCONNECT_READ_ERRORS.name]}
    assert read_errors["nvmlDeviceGetPcieReplayCounter"] == 1


def test_interconnect_runs_on_its_own_thread_and_the_fast_path_makes_no_link_call(nvlink_gpu, tmp_path):
    nvml = FakeNvml([nvlink_gpu])
    collector = GpuCollector(nvml=nvml, interval_s=60, interconnect_interval_s=0.05, infiniband_root=tmp_path,
                             meter_provider=NoOpMeterProvider())  # fmt: skip
    assert collector.start()
    try:
        fast = [fn.__name__ for _, calls in collector.fast_calls() for _, fn, _ in calls]
        assert fast and not [f for f in fast if any(word in f for word in INTERCONNECT_CALLS)]
        before = nvml.calls["nvmlDeviceGetFieldValues"]
        components.wait_for(lambda: nvml.calls["nvmlDeviceGetFieldValues"] >= before + 3, timeout=10,
                            what="three interconnect samples on the interconnect thread")  # fmt: skip
        gpu_power_reads = nvml.calls["nvmlDeviceGetPowerUsage"]
        collector.sample()  # a fast sample reads the GPU, not its links
        assert nvml.calls["nvmlDeviceGetPowerUsage"] == gpu_power_reads + 1
    finally:
        collector.stop()
    stopped = nvml.calls["nvmlDeviceGetFieldValues"]
    time.sleep(0.2)
    assert nvml.calls["nvmlDeviceGetFieldValues"] == stopped  # stop() ends the interconnect thread
    assert collector.interconnect.points() == {}


def test_interconnect_is_off_with_interval_0(tmp_path):
    nvml = FakeNvml([FakeGpu("GPU-a")])
    collector = start(nvml, tmp_path, interval_s=0)
    collector.stop()
    assert collector.interconnect is None
    assert not [f for f in nvml.calls if any(word in f for word in INTERCONNECT_CALLS)]
    assert Settings().interconnect_interval_s == 10.0
    assert Settings().interconnect_infiniband_root == Path("/sys/class/infiniband")


# --------------------------------------------------------------------------- InfiniBand (fake sysfs)
def test_infiniband_port_counters_state_and_rate_from_sysfs(tmp_path):
    write_ib_tree(tmp_path, "mlx5_0", 1)
    write_ib_tree(tmp_path, "mlx5_1", 1, state="1: DOWN", rate="10 Gb/sec (4X SDR)", counters__symbol_error="",
                  link_layer="Ethernet")  # fmt: skip
    collector = start(FakeNvml([FakeGpu("GPU-a", nvlinks=0)]), tmp_path)
    points = collector.interconnect.points()
    collector.stop()
    port0 = {names.HW_ID: "mlx5_0/1"}
    assert values(points, names.HW_NETWORK_IO, **port0, **{names.NETWORK_IO_DIRECTION: "transmit"}) == [1_000_000_000]
    assert values(points, names.HW_NETWORK_IO, **port0, **{names.NETWORK_IO_DIRECTION: "receive"}) == [2_000_000_000]
    assert values(points, names.HW_NETWORK_PACKETS, **port0, **{names.NETWORK_IO_DIRECTION: "receive"}) == [2_000_000]
    errors = {a[names.HW_ERROR_TYPE]: v for v, a in points[names.HW_ERRORS.name] if a[names.HW_ID] == "mlx5_0/1"}
    assert errors == {"symbol_error": 3, "link_downed": 1, "port_rcv_errors": 0, "out_of_buffer": 7}
    up = {a[names.HW_ID]: (v, a[names.IB_RATE], a[names.IB_LINK_LAYER]) for v, a in points[names.HW_NETWORK_UP.name]}
    assert up == {"mlx5_0/1": (1, "400 Gb/sec (4X NDR)", "InfiniBand"), "mlx5_1/1": (0, "10 Gb/sec (4X SDR)", "Ethernet")}
    assert "symbol_error" not in {a[names.HW_ERROR_TYPE] for _, a in points[names.HW_ERRORS.name]
                                  if a[names.HW_ID] == "mlx5_1/1"}  # fmt: skip
    for metric in (names.HW_NETWORK_IO, names.HW_NETWORK_PACKETS, names.HW_NETWORK_UP):
        assert {a[names.HW_TYPE] for _, a in points[metric.name]} == {"network"}


def test_no_infiniband_tree_means_no_ports_and_no_error(tmp_path):
    assert _infiniband.discover(tmp_path / "absent") == []
    collector = start(FakeNvml([FakeGpu("GPU-a")]), tmp_path / "absent")
    points = collector.interconnect.points()
    collector.stop()
    assert points[names.HW_NETWORK_IO.name] == [] and points[names.HW_NETWORK_UP.name] == []
    assert collector.interconnect.read_errors == {}
    assert points[names.HW_GPU_IO.name]  # the GPU's links are still there


def test_a_host_without_a_gpu_still_samples_its_infiniband_ports(tmp_path):
    write_ib_tree(tmp_path / "ib", "mlx5_0", 1)
    for root, has_hca in ((tmp_path / "ib", True), (tmp_path / "absent", False)):
        collector = GpuCollector(nvml=FakeNvml([]), interconnect_interval_s=10.0, infiniband_root=root,
                                 meter_provider=NoOpMeterProvider())  # fmt: skip
        assert not collector.start(background=False) and collector.status is not None  # no GPU
        if not has_hca:
            assert collector.interconnect is None
            continue
        points = collector.interconnect.points()
        collector.stop()
        transmit = {names.HW_ID: "mlx5_0/1", names.NETWORK_IO_DIRECTION: "transmit"}
        assert values(points, names.HW_NETWORK_IO, **transmit) == [1_000_000_000]
        assert points[names.HW_GPU_IO.name] == []


def test_an_unreadable_counter_file_drops_only_its_reading_and_is_counted(tmp_path):
    folder = write_ib_tree(tmp_path)
    collector = start(FakeNvml([FakeGpu("GPU-a", nvlinks=0)]), tmp_path)
    (folder / "counters/port_rcv_data").write_text("not a number\n")
    points = collector.interconnect.sample()
    errors = collector.interconnect.read_errors
    collector.stop()
    assert errors == {("mlx5_0/1", "counters/port_rcv_data", "ValueError"): 1}
    directions = [a[names.NETWORK_IO_DIRECTION] for _, a in points[names.HW_NETWORK_IO.name]]
    assert directions == ["transmit"]


# --------------------------------------------------------------------------- instruments, Prometheus, panels
def test_instruments_have_their_kinds_and_hw_errors_shares_one_family_with_the_gpu_collector(nvlink_gpu, tmp_path):
    write_ib_tree(tmp_path)
    reader = InMemoryMetricReader()
    collector = start(FakeNvml([nvlink_gpu]), tmp_path, meter_provider=MeterProvider(metric_readers=[reader]))
    try:
        data = reader.get_metrics_data()
    finally:
        collector.stop()
    scopes: dict[str, dict] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            scopes[sm.scope.name] = {m.name: m for m in sm.metrics}
    links = scopes["gpt_observatory.telemetry._interconnect"]
    assert isinstance(links["hw.gpu.io"].data, Sum) and links["hw.gpu.io"].data.is_monotonic
    assert links["hw.gpu.io"].unit == "By"
    assert isinstance(links["hw.network.up"].data, Sum) and not links["hw.network.up"].data.is_monotonic
    assert isinstance(links["observatory.gpu.pcie.link.width"].data, Gauge)
    gpu_errors = scopes["gpt_observatory.telemetry._gpu_series"]["hw.errors"]
    assert gpu_errors.description == links["hw.errors"].description and gpu_errors.unit == links["hw.errors"].unit


def test_prometheus_scrapes_the_interconnect_series_and_the_gpu_board_panels_return_data(nvlink_gpu, tmp_path):
    write_ib_tree(tmp_path / "ib")
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    narrow = FakeGpu("GPU-x8", nvlinks=0, pcie_width=(8, 16), bus_id="00000000:2A:00.0")
    collector = start(FakeNvml([nvlink_gpu, narrow]), tmp_path / "ib", meter_provider=provider)
    port = components.free_port()
    server, _ = start_http_server(port, "127.0.0.1", registry=registry)
    titles = {"NVLink throughput", "PCIe throughput", "NVLink links down", "PCIe link width, current and max",
              "PCIe generation, current and max", "PCIe links downtrained", "NVLink and PCIe errors in the time range",
              "Port throughput", "Port packets", "Port state", "Port errors in the time range"}  # fmt: skip
    panels = [q for q in live_queries() if q.where.startswith("gpu: panel") and q.where.split('"')[1] in titles]
    assert {q.where.split('"')[1] for q in panels} == titles
    try:
        with components.prometheus(tmp_path / "prom", [f"127.0.0.1:{port}"], scrape_interval="1s") as prom:
            downtrained = components.wait_for(
                lambda: components.query_prometheus(prom.url, names.prometheus_name(names.GPU_PCIE_LINK_DOWNTRAINED)
                                                    + '{hw_id="GPU-x8"}'),
                timeout=20, what="interconnect series in Prometheus")  # fmt: skip
            assert downtrained[0]["value"][1] == "1"
            time.sleep(2.5)  # two more scrapes: rates have two samples
            outcomes = evaluate(prom.url, panels)
            bytes_tx = components.query_prometheus(
                prom.url, 'hw_gpu_io_bytes_total{observatory_gpu_link_type="nvlink", observatory_gpu_nvlink_link="3",'
                          ' network_io_direction="transmit"}')  # fmt: skip
            ib_up = components.query_prometheus(prom.url, 'hw_network_up{hw_id="mlx5_0/1"}')
    finally:
        server.shutdown()
        server.server_close()
        collector.stop()
        provider.shutdown()
    empty = [(o.query.where, o.error, o.query.expr) for o in outcomes if o.error or not o.samples]
    assert not empty, empty
    assert [r["value"][1] for r in bytes_tx] == [str(1 << 20)]
    assert ib_up[0]["value"][1] == "1" and ib_up[0]["metric"]["observatory_infiniband_rate"] == "400 Gb/sec (4X NDR)"


# --------------------------------------------------------------------------- on a GPU (device machine)
@pytest.mark.gpu
def test_real_nvlink_and_pcie_readings_are_sane_and_printed():
    """Prints what NVML returned for every link (run with -s); H200 boards have NVLink."""
    collector = GpuCollector(interconnect_interval_s=3600, meter_provider=NoOpMeterProvider())
    if not collector.start(background=False):
        pytest.skip(collector.status)
    try:
        points = collector.interconnect.sample()
        errors = collector.interconnect.read_errors
    finally:
        collector.stop()
    for metric, observed in points.items():
        for value, attrs in observed:
            shown = {k: v for k, v in attrs.items() if k not in (names.HW_NAME, names.HW_TYPE, names.GPU_INDEX)}
            print(f"{metric} {value} {shown}")
    print("read errors:", errors)
    widths = {a[names.GPU_PCIE_LINK_BOUND]: v for v, a in points[names.GPU_PCIE_LINK_WIDTH.name]}
    assert 1 <= widths["current"] <= widths["max"] <= 32, widths
    for value, _ in points[names.GPU_NVLINK_UP.name]:
        assert value in (0, 1)
