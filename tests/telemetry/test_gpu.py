"""GPU telemetry from NVML (telemetry/gpu.py, observatory gpu).

Without a GPU: the real no-driver path (this machine's NVML library is absent), and our own
conversion of readings into OTel and DCGM-named series, checked on hand-built samples and real
NVML structs. With a GPU (``-m gpu`` on the device machine): real readings, a bf16 matmul load,
and the Prometheus endpoint showing both name sets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator

import pynvml
import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader, Sum
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from gpt_observatory.telemetry import names
from gpt_observatory.telemetry._dcgm import DcgmCollector, dcgm_families
from gpt_observatory.telemetry._gpu_series import GpuInstruments, clock_event_reasons, otel_points
from gpt_observatory.telemetry._nvml import Reading, build_sample, read
from gpt_observatory.telemetry.gpu import (
    NO_DRIVER,
    GpuCollector,
    GpuInfo,
    GpuSample,
    ProcessMemory,
    start_from_settings,
)
from gpt_observatory.telemetry.settings import Settings
from tests import components

GIB = 1 << 30
VENV_BIN = os.path.dirname(sys.executable)


def nvml_driver_present() -> bool:
    """What NVML itself says: False only when the library or the driver is missing."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        if exc.value in (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED):
            return False
        raise
    pynvml.nvmlShutdown()
    return True


DRIVER = nvml_driver_present()
no_driver_only = pytest.mark.skipif(DRIVER, reason="this machine has an NVIDIA driver (the no-driver path)")
needs_driver = pytest.mark.skipif(not DRIVER, reason="NVML reports no NVIDIA driver on this machine")

H100 = GpuInfo(0, "GPU-1d2c3b4a-0000-1111-2222-333344445555", "NVIDIA H100 80GB HBM3", 80 * GIB, "00000000:19:00.0")
MIG_PARENT = GpuInfo(1, "GPU-aaaa", "NVIDIA A100-SXM4-40GB", 40 * GIB, "00000000:2A:00.0", reports_utilization=False)
MIG = GpuInfo(
    1, "MIG-bbbb", "NVIDIA A100-SXM4-40GB MIG 1g.5gb", 5 * GIB, "00000000:2A:00.0",
    parent_uuid="GPU-aaaa", mig_profile="1g.5gb", mig_instance=7, reports_utilization=False,
)  # fmt: skip


def busy_h100() -> GpuSample:
    return GpuSample(
        H100, 1.0, utilization_pct=87, memory_activity_pct=40, encoder_pct=0, decoder_pct=3,
        memory_used_bytes=20 * GIB, memory_free_bytes=59 * GIB, power_mw=412_500, temperature_c=61,
        graphics_clock_mhz=1755, sm_clock_mhz=1755, memory_clock_mhz=2619,
        clock_event_reasons=pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown,
        energy_mj=123_456_789, ecc_corrected=2, ecc_uncorrected=0, xid_errors=1, last_xid=79,
        processes=(ProcessMemory(4242, "python3", 18 * GIB),),
    )  # fmt: skip


def mig_samples() -> list[GpuSample]:
    parent = GpuSample(
        MIG_PARENT,
        1.0,
        memory_used_bytes=4 * GIB,
        memory_free_bytes=36 * GIB,
        power_mw=90_000,
        temperature_c=40,
        sm_clock_mhz=1410,
        memory_clock_mhz=1215,
        energy_mj=5_000,
    )
    instance = GpuSample(
        MIG, 1.0, memory_used_bytes=1 * GIB, memory_free_bytes=4 * GIB, processes=(ProcessMemory(77, "vllm", 1 * GIB),)
    )
    return [parent, instance]


def values(points: dict, metric: names.Metric, **attrs) -> list[float]:
    return [v for v, a in points[metric.name] if all(a.get(k) == want for k, want in attrs.items())]


# --------------------------------------------------------------------------- no driver (CPU, for real)
@no_driver_only
def test_without_a_driver_the_collector_says_so_and_exports_nothing():
    reader = InMemoryMetricReader()
    collector = GpuCollector(meter_provider=MeterProvider(metric_readers=[reader]))
    assert collector.start() is False
    assert collector.status == NO_DRIVER
    assert collector.snapshot() == [] and collector.sample() == [] and collector.read_errors == {}
    assert collector.start() is False  # asking again changes nothing
    collector.stop()
    data = reader.get_metrics_data()
    assert data is None or not [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    assert start_from_settings(Settings(gpu_enabled=True), MeterProvider()) is None
    assert start_from_settings(Settings(gpu_enabled=False)) is None


@no_driver_only
def test_configure_logs_one_line_and_publishes_no_gpu_series(tmp_path):
    script = (
        "import json\nfrom gpt_observatory import telemetry\n"
        "kw = dict(metrics_exporter=['memory'], traces_exporter=['memory'], logs_exporter=['memory'],\n"
        "          console_logs=True)\n"
        "telemetry.configure('gpu-a', **kw)\n"
        "h = telemetry.configure('gpu-b', **kw)  # reconfigured: the GPU collector starts again\n"
        "print(json.dumps({'series': sorted(h.memory.metrics()), 'extras': len(h.extras)}))\n"
        "h.shutdown()\n"
    )
    env = {**os.environ, "OBSERVATORY_STATE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (done.stdout + done.stderr).count(NO_DRIVER) == 1, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["extras"] == 0
    assert not [s for s in result["series"] if s.startswith(("hw.", "observatory.gpu"))]


@no_driver_only
def test_observatory_gpu_says_no_driver_and_exits_0():
    cli = os.path.join(VENV_BIN, "observatory")
    done = subprocess.run([cli, "gpu", "--once", "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["status"] == NO_DRIVER and doc["gpus"] == []
    assert NO_DRIVER in done.stderr  # the collector's one log line

    from typer.testing import CliRunner

    from gpt_observatory.commands.gpu import app

    shown = CliRunner().invoke(app, ["--once"])
    assert shown.exit_code == 0 and NO_DRIVER in shown.output


@no_driver_only
def test_a_failed_nvml_call_drops_only_its_reading_and_is_counted_by_function():
    def sm_clock(handle):  # a getter that answers
        return 1980

    # Without the NVML library every real getter fails (NVMLError_Uninitialized): a transient error.
    table = (
        Reading("power", pynvml.nvmlDeviceGetPowerUsage),
        Reading("temperature", pynvml.nvmlDeviceGetTemperature, (pynvml.NVML_TEMPERATURE_GPU,)),
        Reading("sm_clock", sm_clock),
    )
    errors: Counter = Counter()
    got, kept = read(None, H100.uuid, table, errors)
    assert got == {"sm_clock": 1980}
    assert kept == table  # transient failures are tried again next time
    read(None, H100.uuid, kept, errors)
    assert errors == {
        (H100.uuid, "nvmlDeviceGetPowerUsage", "NVMLError_Uninitialized"): 2,
        (H100.uuid, "nvmlDeviceGetTemperature", "NVMLError_Uninitialized"): 2,
    }
    sample = build_sample(H100, 5.0, got, {})
    assert sample.sm_clock_mhz == 1980 and sample.power_mw is None and sample.temperature_c is None


def test_a_reading_the_gpu_does_not_support_is_counted_once_then_no_longer_read():
    def nvmlDeviceGetEncoderUtilization(handle):  # stands for a GPU without an encoder
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def power(handle):
        return 300_000

    table = (Reading("encoder", nvmlDeviceGetEncoderUtilization), Reading("power", power))
    errors: Counter = Counter()
    got, table = read("GPU-x", "GPU-x", table, errors)
    assert got == {"power": 300_000} and [r.key for r in table] == ["power"]
    read("GPU-x", "GPU-x", table, errors)
    assert errors == {("GPU-x", "nvmlDeviceGetEncoderUtilization", "NVMLError_NotSupported"): 1}


# --------------------------------------------------------------------------- our conversions (CPU)
def test_raw_nvml_structs_become_a_sample_in_nvml_units():
    util = pynvml.c_nvmlUtilization_t(gpu=87, memory=40)
    memory = pynvml.c_nvmlMemory_v2_t(total=80 * GIB, reserved=GIB // 2, free=59 * GIB, used=20 * GIB)
    fast = {
        "utilization": util,
        "memory": memory,
        "encoder": [0, 167_000],
        "decoder": [3, 167_000],
        "power": 412_500,
        "temperature": 61,
        "sm_clock": 1755,
        "memory_clock": 2619,
        "clock_events": 4,
    }
    slow = {"energy": 123, "processes": (ProcessMemory(1, "p", 5),)}
    s = build_sample(H100, 9.0, fast, slow, xid=(1, 79))
    assert (s.utilization_pct, s.memory_activity_pct, s.encoder_pct, s.decoder_pct) == (87, 40, 0, 3)
    assert (s.memory_used_bytes, s.memory_free_bytes, s.power_mw, s.temperature_c) == (20 * GIB, 59 * GIB, 412_500, 61)
    assert (s.sm_clock_mhz, s.memory_clock_mhz, s.graphics_clock_mhz, s.clock_event_reasons) == (1755, 2619, None, 4)
    assert (s.energy_mj, s.xid_errors, s.last_xid, s.processes) == (123, 1, 79, (ProcessMemory(1, "p", 5),))


def test_clock_event_reasons_follow_nvml_bit_order():
    nvml_bits = {
        "gpu_idle": pynvml.nvmlClocksEventReasonGpuIdle,
        "applications_clocks_setting": pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
        "sw_power_cap": pynvml.nvmlClocksEventReasonSwPowerCap,
        "hw_slowdown": pynvml.nvmlClocksEventReasonHwSlowdown,
        "sync_boost": pynvml.nvmlClocksEventReasonSyncBoost,
        "sw_thermal_slowdown": pynvml.nvmlClocksEventReasonSwThermalSlowdown,
        "hw_thermal_slowdown": pynvml.nvmlClocksEventReasonHwThermalSlowdown,
        "hw_power_brake_slowdown": pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
        "display_clock_setting": pynvml.nvmlClocksEventReasonDisplayClockSetting,
    }
    assert tuple(nvml_bits) == names.GPU_CLOCK_EVENT_REASONS
    for reason, bit in nvml_bits.items():
        assert clock_event_reasons(bit) == [reason]
    assert clock_event_reasons(0x44) == ["sw_power_cap", "hw_thermal_slowdown"]


def test_otel_series_use_semconv_units_and_label_every_series_with_the_gpu():
    errors = {(H100.uuid, "nvmlDeviceGetTotalEccErrors", "NVMLError_NotSupported"): 1}
    points = otel_points([busy_h100()], errors)
    assert values(points, names.HW_GPU_UTILIZATION, **{names.HW_GPU_TASK: "general"}) == [0.87]
    assert values(points, names.HW_GPU_UTILIZATION, **{names.HW_GPU_TASK: "decoder"}) == [0.03]
    assert values(points, names.GPU_MEMORY_BANDWIDTH_UTILIZATION) == [0.40]
    assert values(points, names.HW_GPU_MEMORY_USAGE) == [20 * GIB]
    assert values(points, names.HW_GPU_MEMORY_LIMIT) == [80 * GIB]
    assert values(points, names.HW_GPU_MEMORY_UTILIZATION) == [0.25]
    assert values(points, names.HW_POWER) == [412.5]
    assert values(points, names.HW_ENERGY) == [123_456.789]
    assert values(points, names.HW_TEMPERATURE) == [61]
    assert values(points, names.GPU_CLOCK, **{names.GPU_CLOCK_DOMAIN: "sm"}) == [1_755_000_000]
    active = {a[names.GPU_CLOCK_EVENT_REASON] for v, a in points[names.GPU_CLOCK_EVENT.name] if v}
    assert active == {"sw_power_cap", "hw_thermal_slowdown"}
    assert len(points[names.GPU_CLOCK_EVENT.name]) == len(names.GPU_CLOCK_EVENT_REASONS)
    assert values(points, names.HW_ERRORS, **{names.HW_ERROR_TYPE: "xid"}) == [1]
    assert values(points, names.GPU_PROCESS_MEMORY, **{names.PROCESS_PID: 4242, names.PROCESS_NAME: "python3"}) == [
        18 * GIB
    ]
    assert values(points, names.GPU_READ_ERRORS, **{names.GPU_NVML_FUNCTION: "nvmlDeviceGetTotalEccErrors"}) == [1]
    for metric_name, observed in points.items():
        for _, attrs in observed:
            assert attrs[names.HW_ID] == H100.uuid and attrs[names.HW_TYPE] == "gpu", metric_name
            if metric_name != names.GPU_READ_ERRORS.name:
                assert attrs[names.HW_NAME] == H100.name and attrs[names.GPU_INDEX] == 0


def test_mig_utilisation_is_not_reported_rather_than_zero():
    points = otel_points(mig_samples())
    assert points[names.HW_GPU_UTILIZATION.name] == []
    assert points[names.GPU_MEMORY_BANDWIDTH_UTILIZATION.name] == []
    by_id = {a[names.HW_ID]: (v, a) for v, a in points[names.HW_GPU_MEMORY_USAGE.name]}
    assert by_id["MIG-bbbb"][0] == GIB
    assert by_id["MIG-bbbb"][1][names.HW_PARENT] == "GPU-aaaa"
    assert by_id["MIG-bbbb"][1][names.GPU_MIG] == "1g.5gb"
    # readings that were not taken are absent, never 0
    assert {a[names.HW_ID] for _, a in points[names.HW_POWER.name]} == {"GPU-aaaa"}
    assert points[names.HW_ERRORS.name] == []


def test_instruments_report_the_points_with_their_kinds_and_units():
    reader = InMemoryMetricReader()
    samples = [busy_h100(), *mig_samples()]
    GpuInstruments(lambda: otel_points(samples), MeterProvider(metric_readers=[reader]))
    collected = {
        m.name: m for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    assert isinstance(collected["hw.gpu.utilization"].data, Gauge) and collected["hw.gpu.utilization"].unit == "1"
    assert isinstance(collected["hw.energy"].data, Sum) and collected["hw.energy"].data.is_monotonic
    usage = collected["hw.gpu.memory.usage"].data
    assert isinstance(usage, Sum) and not usage.is_monotonic and len(usage.data_points) == 3
    assert collected["hw.power"].unit == "W" and len(collected["hw.power"].data.data_points) == 2


def test_dcgm_names_units_and_labels_match_dcgm_exporter():
    families = {f.name: f for f in dcgm_families([busy_h100(), *mig_samples()], hostname="node-1")}
    assert set(families) <= set(names.DCGM_SERIES)
    util = families["DCGM_FI_DEV_GPU_UTIL"].samples
    assert [(s.labels, s.value) for s in util] == [
        (
            {
                "gpu": "0",
                "UUID": H100.uuid,
                "pci_bus_id": "00000000:19:00.0",
                "device": "nvidia0",
                "modelName": "NVIDIA H100 80GB HBM3",
                "Hostname": "node-1",
            },
            87.0,
        )
    ]  # fmt: skip  (one series: MIG utilisation is not reported)
    by_gpu = {(s.labels["UUID"], s.labels.get("GPU_I_ID")): s for s in families["DCGM_FI_DEV_FB_USED"].samples}
    assert by_gpu[(H100.uuid, None)].value == 20 * 1024  # MiB
    mig = by_gpu[("GPU-aaaa", "7")]  # an instance carries its parent's UUID, as dcgm-exporter does
    assert mig.value == 1024 and mig.labels["GPU_I_PROFILE"] == "1g.5gb"
    assert mig.labels["modelName"] == "NVIDIA A100-SXM4-40GB"
    assert families["DCGM_FI_DEV_POWER_USAGE"].samples[0].value == 412.5  # W
    assert families["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].samples[0].value == 123_456_789  # mJ
    assert families["DCGM_FI_DEV_XID_ERRORS"].samples[0].value == 79  # the last XID


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[GpuSample]]]:
    """One /metrics with the OTel Prometheus reader and the DCGM collector reading the same samples."""
    registry = CollectorRegistry()
    samples = [busy_h100(), *mig_samples()]
    reader = PrometheusMetricReader(registry=registry)
    provider = MeterProvider(metric_readers=[reader])
    GpuInstruments(lambda: otel_points(samples), provider)
    registry.register(DcgmCollector(lambda: samples, hostname="node-1"))
    port = components.free_port()
    server, _ = start_http_server(port, "127.0.0.1", registry=registry)
    yield f"127.0.0.1:{port}", samples
    server.shutdown()
    server.server_close()
    provider.shutdown()


def test_prometheus_scrapes_otel_and_dcgm_series_from_one_endpoint(endpoint, tmp_path):
    target, _ = endpoint
    text = urllib.request.urlopen(f"http://{target}/metrics", timeout=5).read().decode()
    scraped = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    ours = {s for s in scraped if s.startswith(("hw_", "observatory_gpu"))}
    assert ours and ours <= set(names.all_prometheus_series()), ours - set(names.all_prometheus_series())
    assert {s for s in scraped if s.startswith("DCGM_")} == set(names.DCGM_SERIES)
    with components.prometheus(tmp_path / "prom", [target], scrape_interval="1s") as prom:

        def query(q):
            return components.query_prometheus(prom.url, q)

        util = components.wait_for(
            lambda: query('DCGM_FI_DEV_GPU_UTIL{modelName="NVIDIA H100 80GB HBM3"}'),
            timeout=20,
            what="DCGM series in Prometheus",
        )
        assert util[0]["value"][1] == "87" and util[0]["metric"]["Hostname"] == "node-1"
        ratio = query(names.prometheus_name(names.HW_GPU_UTILIZATION) + '{hw_gpu_task="general"}')
        assert [r["value"][1] for r in ratio] == ["0.87"]
        assert query("sum(DCGM_FI_DEV_FB_USED)")[0]["value"][1] == str(20 * 1024 + 4 * 1024 + 1024)


# --------------------------------------------------------------------------- on a GPU (device machine)
@pytest.fixture
def collector() -> Iterator[GpuCollector]:
    c = GpuCollector(interval_s=0.2, slow_interval_s=0.5, meter_provider=NoOpMeterProvider())
    assert c.start(), c.status
    yield c
    c.stop()


@pytest.mark.gpu
@needs_driver
def test_readings_are_sane(collector):
    samples = collector.snapshot()
    assert samples, "NVML found a driver but the collector lists no device"
    for s in samples:
        assert s.gpu.uuid.startswith(("GPU-", "MIG-")) and s.gpu.name
        assert s.gpu.memory_total_bytes and 0 <= s.memory_used_bytes <= s.gpu.memory_total_bytes
        if s.gpu.parent_uuid is None:
            assert s.power_mw > 0 and s.temperature_c > 0 and s.sm_clock_mhz > 0 and s.memory_clock_mhz > 0
            assert s.energy_mj > 0 and s.clock_event_reasons is not None
        if s.gpu.reports_utilization:
            assert 0 <= s.utilization_pct <= 100 and 0 <= s.memory_activity_pct <= 100
        else:
            assert s.utilization_pct is None  # MIG: not reported, not 0
    fast_calls = {fn for (_, fn, _), n in collector.read_errors.items()}
    assert not fast_calls & {"nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetPowerUsage"}


@pytest.mark.gpu
@needs_driver
def test_matmul_load_shows_up_within_2s_with_this_process_and_its_memory(collector):
    torch = pytest.importorskip("torch")
    assert torch.cuda.is_available(), "an NVIDIA driver is present but this torch has no CUDA: install a CUDA build"
    torch_uuid = str(torch.cuda.get_device_properties(0).uuid).removeprefix("GPU-")
    uuid = next((s.gpu.uuid for s in collector.snapshot() if s.gpu.uuid.removeprefix("GPU-") == torch_uuid), None)
    assert uuid, f"torch's cuda:0 ({torch_uuid}) is not among {[s.gpu.uuid for s in collector.snapshot()]}"
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    a @ b  # cuBLAS initialises on the first matmul: not part of the 2 s
    torch.cuda.synchronize()
    stop = threading.Event()

    def load():
        while not stop.is_set():
            for _ in range(20):
                a @ b
            torch.cuda.synchronize()

    worker = threading.Thread(target=load, daemon=True)
    started = time.monotonic()
    worker.start()
    try:

        def busy():
            return next((s for s in collector.snapshot() if s.gpu.uuid == uuid and (s.utilization_pct or 0) > 50), None)

        hot = components.wait_for(busy, timeout=2.0, interval=0.05, what=f"utilisation > 50 on {uuid}")
        assert time.monotonic() - started <= 2.0, hot

        def mine():
            s = next(s for s in collector.snapshot() if s.gpu.uuid == uuid)
            return next((p for p in s.processes or () if p.pid == os.getpid()), None)

        proc = components.wait_for(mine, timeout=3.0, interval=0.1, what=f"pid {os.getpid()} in NVML's process list")
        assert proc.used_bytes is not None and proc.used_bytes >= torch.cuda.memory_allocated()
    finally:
        stop.set()
        worker.join(timeout=10)


@pytest.mark.gpu
@needs_driver
def test_prometheus_endpoint_shows_otel_and_dcgm_series(tmp_path):
    from gpt_observatory import telemetry
    port = components.free_port()
    handle = telemetry.configure(
        "gpu-endpoint", metrics_exporter=["prometheus"], traces_exporter=["none"], logs_exporter=["none"],
        prometheus_port=port, gpu_dcgm_names=True, gpu_interval_s=0.2,
    )  # fmt: skip
    try:
        assert handle.extras, "telemetry.configure() started no GPU collector"
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        scraped = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        otel = [
            names.HW_GPU_MEMORY_USAGE,
            names.HW_GPU_MEMORY_LIMIT,
            names.HW_GPU_MEMORY_UTILIZATION,
            names.HW_POWER,
            names.HW_TEMPERATURE,
            names.HW_ENERGY,
            names.GPU_CLOCK,
            names.GPU_CLOCK_EVENT,
        ]
        dcgm = [
            "DCGM_FI_DEV_FB_USED",
            "DCGM_FI_DEV_FB_FREE",
            "DCGM_FI_DEV_POWER_USAGE",
            "DCGM_FI_DEV_GPU_TEMP",
            "DCGM_FI_DEV_SM_CLOCK",
            "DCGM_FI_DEV_MEM_CLOCK",
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        ]
        if any(s.gpu.reports_utilization for s in handle.extras[0].snapshot()):
            otel += [names.HW_GPU_UTILIZATION, names.GPU_MEMORY_BANDWIDTH_UTILIZATION]
            dcgm += ["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL"]
        missing = [n for m in otel for n in names.prometheus_series(m) if n not in scraped]
        missing += [n for n in dcgm if n not in scraped]
        assert not missing, f"missing from /metrics: {missing}"
    finally:
        handle.shutdown()
