"""GPU-seconds and joules per generation (telemetry/gpu_energy.py, issue 17 Deliver 5).

Without a GPU: the split's arithmetic (hypothesis), the attributor against a scripted energy counter
(resets included), and the real gateway, ledger and in-process backend with a fake NVML whose counter
grows with time (the context's and the row's figures filled) or with no NVML at all (None, not 0).
With a GPU (``-m gpu`` on the device machine): two tenants with different prompt lengths, and the
attributed joules within 5 % of the NVML counter's increase over the run.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import threading
import time
from typing import Any

import pynvml
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_observatory import telemetry
from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.backends.base import ModelRouter
from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
from gpt_observatory.serving_hooks.inference import GenAIHooks, ModelInfo
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.gpu_energy import EnergyAttributor, Share, acquire, delta_j, release, split, weights
from tests.serving_hooks.echo_model import EchoModel
from tests.serving_hooks.support import point_value
from tests.telemetry.energy_load import PROMPTS, TinyGpt, measure
from tests.telemetry.fake_nvml import FakeGpu, FakeNvml
from tests.telemetry.test_gpu import needs_driver

GPU = FakeGpu("GPU-0e0e0e0e-0000-1111-2222-333344445555", name="NVIDIA H100 80GB HBM3")


class CounterNvml(FakeNvml):
    """A fake NVML whose energy counter is ``value`` (set by the test), every read of it recorded."""

    def __init__(self, value: int = 5_000_000) -> None:
        super().__init__([GPU])
        self.value = value
        self.reads: list[int] = []

    def nvmlDeviceGetTotalEnergyConsumption(self, gpu: FakeGpu) -> int:
        self._call("nvmlDeviceGetTotalEnergyConsumption", gpu)
        self.reads.append(self.value)
        return self.value


class PoweredNvml(CounterNvml):
    """A GPU drawing ``watts`` all the time: the counter grows with the wall clock."""

    def __init__(self, watts: float = 400.0) -> None:
        super().__init__()
        self.watts, self.t0, self._lock = watts, time.monotonic(), threading.Lock()

    def nvmlDeviceGetTotalEnergyConsumption(self, gpu: FakeGpu) -> int:
        with self._lock:
            self.value = 5_000_000 + int((time.monotonic() - self.t0) * self.watts * 1000)
            return super().nvmlDeviceGetTotalEnergyConsumption(gpu)


class GpuEcho(EchoModel):
    """The echo model, saying it runs on the first GPU."""

    device = "cuda:0"


def expected_joules(reads: list[int]) -> float:
    """What the counter rose by between consecutive reads, a fall (a reset) counting 0."""
    return sum(max(b - a, 0) for a, b in itertools.pairwise(reads)) / 1000


# --------------------------------------------------------------------------- the split's arithmetic
@given(st.floats(0, 1e6), st.floats(0, 3600), st.lists(st.floats(0, 1e4), min_size=1, max_size=20))
def test_an_interval_is_split_whole_without_a_negative_part(joules, seconds, ws):
    parts, idle = split(joules, seconds, [w + 1e-3 for w in ws])
    assert idle == 0 and len(parts) == len(ws)
    assert all(s >= 0 and j >= 0 for s, j in parts)
    assert math.isclose(sum(j for _, j in parts), joules, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(sum(s for s, _ in parts), seconds, rel_tol=1e-9, abs_tol=1e-9)


@given(st.floats(0, 1e6), st.floats(0, 60))
def test_an_interval_with_no_generation_is_idle(joules, seconds):
    assert split(joules, seconds, []) == ([], joules)


@given(st.lists(st.integers(0, 10_000), min_size=2, max_size=12).filter(lambda r: sum(r) > 0),
       st.floats(1, 1e5))
def test_shares_are_proportional_to_the_tokens_made_in_the_interval(reported, joules):
    ws = weights(reported, [True] * len(reported))
    parts, _ = split(joules, 1.0, ws)
    for (_, j), r in zip(parts, reported, strict=True):
        assert math.isclose(j, joules * r / sum(reported), rel_tol=1e-9, abs_tol=1e-6)


def test_a_non_streaming_generation_weighs_the_mean_of_the_streaming_ones_and_no_tokens_is_equal_shares():
    assert weights([6, 2, 0], [True, True, False]) == [6.0, 2.0, 4.0]
    assert weights([0, 0, 0], [True, False, True]) == [1.0, 1.0, 1.0]
    assert weights([0, 0], [False, False]) == [1.0, 1.0]
    assert weights([30, 0], [False, False]) == [30.0, 0.0]  # a prompt's tokens weigh in its first interval


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_a_counter_that_went_backwards_is_a_reset_worth_nothing(last, now):
    joules, reset = delta_j(last, now)
    assert joules >= 0 and reset == (now < last)
    assert joules == (0 if reset else (now - last) / 1000)


# --------------------------------------------------------------------------- the attributor, scripted
ops = st.lists(st.one_of(
    st.tuples(st.just("open"), st.booleans(), st.integers(0, 2000)),
    st.tuples(st.just("add"), st.integers(0, 50), st.integers(1, 40)),
    st.tuples(st.just("close"), st.integers(0, 50), st.just(0)),
    st.tuples(st.just("sample"), st.just(0), st.just(0)),
), max_size=60)
steps = st.tuples(st.integers(-3_000_000, 500_000), st.floats(0, 2))  # counter step (negative: a reset), clock step


@settings(max_examples=200, deadline=None)
@given(ops, st.lists(steps, min_size=60, max_size=60))
def test_attributed_plus_idle_is_the_counters_increase_and_nobody_gets_a_negative_share(script, moves):
    nvml, now = CounterNvml(), [0.0]
    attributor = EnergyAttributor(nvml=nvml, clock=lambda: now[0])
    assert attributor.start(background=False)
    shares: list[Share] = []
    for (op, a, b), (de, dt) in zip(script, moves, strict=False):
        nvml.value = max(nvml.value + de, 0) if de >= 0 else max(nvml.value // 2 + de // 1000, 0)
        now[0] += dt
        if op == "open":
            shares.append(attributor.open(Share(0, live=a, tokens=b)))
        elif op == "add" and shares:
            shares[a % len(shares)].add(b)
        elif op == "close" and shares:
            attributor.close(shares[a % len(shares)])
        elif op == "sample":
            attributor.sample()
    for s in shares:
        attributor.close(s)
    attributor.stop()
    assert math.isclose(attributor.attributed_j + attributor.idle_j, expected_joules(nvml.reads),
                        rel_tol=1e-9, abs_tol=1e-6)
    assert math.isclose(sum(s.joules for s in shares), attributor.attributed_j, rel_tol=1e-9, abs_tol=1e-6)
    assert all(s.joules >= 0 and s.seconds >= 0 for s in shares)
    assert sum(s.seconds for s in shares) <= now[0] + 1e-9
    assert attributor.resets == sum(1 for a, b in itertools.pairwise(nvml.reads) if b < a)


def test_two_generations_split_an_interval_by_the_tokens_each_made_and_idle_time_is_nobodys():
    nvml, now = CounterNvml(1_000_000), [100.0]
    attributor = EnergyAttributor(nvml=nvml, clock=lambda: now[0])
    assert attributor.start(background=False)
    nvml.value += 7_000  # 7 J before anything runs: idle
    a = attributor.open(Share(0))
    b = attributor.open(Share(0))
    a.add(3)
    b.add(1)
    nvml.value += 40_000
    now[0] += 0.5
    attributor.sample()
    assert (a.joules, b.joules) == (30.0, 10.0) and (a.seconds, b.seconds) == (0.375, 0.125)
    nvml.value += 10_000  # nobody made a token: equal shares
    now[0] += 0.5
    assert attributor.close(a) == (0.625, 35.0)
    nvml.value += 2_000_000_000  # then b alone
    now[0] += 1.0
    assert attributor.close(b) == (1.375, 2_000_015.0)
    assert (attributor.idle_j, attributor.attributed_j) == (7.0, 2_000_050.0)
    attributor.stop()


def test_the_sampler_thread_splits_long_generations_at_its_interval():
    nvml = PoweredNvml()
    attributor = EnergyAttributor(interval_s=0.01, nvml=nvml)
    assert attributor.start()
    share = attributor.open(Share(0))
    deadline = time.monotonic() + 30
    while len(nvml.reads) < 6 and time.monotonic() < deadline:  # the start, the open, then the sampler's
        time.sleep(0.01)
    seconds, joules = attributor.close(share)
    attributor.stop()
    assert len(nvml.reads) >= 7 and seconds > 0 and joules > 0
    assert math.isclose(attributor.attributed_j + attributor.idle_j, expected_joules(nvml.reads), rel_tol=1e-9)


def test_without_nvml_or_a_gpu_there_is_no_attributor():
    class NoDriver(FakeNvml):
        def nvmlInit(self) -> None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    assert acquire(nvml=NoDriver([GPU])) is None
    nvml = CounterNvml()
    nvml.gpus = []
    assert acquire(nvml=nvml) is None
    shared = acquire(nvml=(real := CounterNvml()))
    assert shared is not None and acquire(nvml=real) is shared  # one per process, shared by its users
    release(shared)
    assert shared._thread is not None and shared._thread.is_alive()  # one user left
    release(shared)
    assert not shared._thread.is_alive()


# --------------------------------------------------------------------------- the gateway, the ledger, the backend
def _app(tmp_path, model: Any, nvml: Any):
    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore

    keys = ApiKeyStore(tmp_path / "keys.json")
    tokens = {t: keys.create(t, ["inference"])[0] for t in ("short", "long")}
    settings_ = load(api_keys_file=tmp_path / "keys.json", ledger_enabled=True,
                     ledger_url=str(tmp_path / "ledger.sqlite3"), ledger_spool_dir=tmp_path / "spool")
    backend = InProcessBackend(GenAIHooks("server"), "tiny-gpt", model=model, info=ModelInfo("tiny-gpt", "7"),
                               nvml=nvml, energy_interval_s=0.01)
    return create_app(settings_, router=ModelRouter({"champion": backend})), backend, tokens


def _rows(tmp_path) -> list[tuple]:
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    rows = db.execute("SELECT tenant, stream, output_tokens, gpu_seconds, gpu_joules FROM usage").fetchall()
    db.close()
    return rows


def _send(url: str, tokens: dict[str, str], each: int = 3) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(each):
            for tenant, prompt in PROMPTS.items():
                body = {"model": "tiny-gpt", "prompt": prompt, "max_tokens": 8 + i, "stream": i % 2 == 1}
                with http.stream("POST", "/completions", json=body,
                                 headers={"authorization": f"Bearer {tokens[tenant]}"}) as r:
                    r.read()
                    assert r.status_code == 200, r.text


def test_a_model_on_a_gpu_gets_its_seconds_and_joules_on_the_row_and_the_tenant_counters(tmp_path):
    from tests.serving_hooks.support import serve

    handle = telemetry.configure("energy-tests", traces_exporter=["none"], metrics_exporter=["memory"],
                                 logs_exporter=["none"], gpu_enabled=False)
    nvml = PoweredNvml()
    app, backend, tokens = _app(tmp_path, GpuEcho(delay_s=0.002), nvml)
    with serve(app) as gw:
        attributor = backend.energy.attributor
        assert attributor is not None and attributor.status == "ok"
        _send(gw.v1, tokens)
        points = handle.memory.metrics()
    assert not attributor._thread.is_alive()  # the app's shutdown stopped it
    rows = _rows(tmp_path)
    assert len(rows) == 6 and {r[1] for r in rows} == {0, 1}  # streamed and not
    assert all(r[3] is not None and r[3] > 0 and r[4] is not None and r[4] > 0 for r in rows), rows
    # Every joule the counter rose by is on a row or idle: nothing lost, nothing made up.
    assert math.isclose(sum(r[4] for r in rows) + attributor.idle_j, expected_joules(nvml.reads), rel_tol=1e-9)
    joules = points[names.GEN_AI_SERVER_ENERGY.name]
    for tenant in PROMPTS:
        mine = [r for r in rows if r[0] == tenant]
        assert math.isclose(point_value(joules, **{names.TENANT: tenant, names.MODEL_VERSION: "7"}),
                            sum(r[4] for r in mine), rel_tol=1e-9)
        seconds = point_value(points[names.GEN_AI_SERVER_GPU_TIME.name], **{names.TENANT: tenant})
        assert math.isclose(seconds, sum(r[3] for r in mine), rel_tol=1e-9)


@pytest.mark.parametrize("model, nvml", [(GpuEcho(), None), (EchoModel(), PoweredNvml())],
                         ids=["no NVML (this machine's driver, or none)", "a model on the CPU"])
def test_without_a_gpu_the_rows_gpu_figures_are_empty_not_zero(tmp_path, model, nvml):
    from tests.serving_hooks.support import serve

    if nvml is None:
        try:
            pynvml.nvmlInit()
            pynvml.nvmlShutdown()
            pytest.skip("this machine has an NVIDIA driver")
        except pynvml.NVMLError:
            pass
    app, backend, tokens = _app(tmp_path, model, nvml)
    with serve(app) as gw:
        assert (backend.energy.attributor is None) == (nvml is None)
        _send(gw.v1, tokens, each=2)
    rows = _rows(tmp_path)
    assert len(rows) == 4 and all(r[3] is None and r[4] is None for r in rows), rows


def test_the_gpu_run_itself_through_a_cpu_model_and_a_fake_counter(tmp_path):
    """The GPU check's own code (energy_load.measure) on the CPU: the figures it reports add up."""
    pytest.importorskip("torch")
    nvml = PoweredNvml()
    run = measure(tmp_path, TinyGpt("cpu", says_device="cuda:0", context=64, n_layer=1, n_head=2, d_model=32),
                  nvml=nvml, requests=4, clients=2, max_tokens=4)
    assert set(run.tenants) == set(PROMPTS) and run.rows_without_energy == 0
    assert all(t["requests"] == 4 and t["gpu_joules"] > 0 for t in run.tenants.values())
    assert 0 < run.attributed_j <= run.nvml_delta_j + 1e-6  # a fake that draws power all along: some is idle


# --------------------------------------------------------------------------- on a GPU (device machine)
@pytest.mark.gpu
@needs_driver
def test_attributed_joules_are_within_5_percent_of_the_nvml_energy_delta(tmp_path):
    torch = pytest.importorskip("torch")
    assert torch.cuda.is_available(), "an NVIDIA driver is present but this torch has no CUDA: install a CUDA build"
    run = measure(tmp_path, TinyGpt("cuda"))
    print({t: round(v["j_per_token"], 4) for t, v in run.tenants.items()}, f"ratio {run.ratio:.4f}")
    assert set(run.tenants) == set(PROMPTS) and run.rows_without_energy == 0
    assert all(v["j_per_token"] > 0 for v in run.tenants.values())
    assert 0.95 <= run.ratio <= 1.05, (run.attributed_j, run.nvml_delta_j, run.idle_j)


def test_the_interval_setting_reaches_the_in_process_backends_and_0_turns_attribution_off():
    import asyncio

    from gpt_observatory.serving_hooks._catalog_backends import build_hooks, build_router
    from gpt_observatory.serving_hooks.backends._energy import EnergyMeter

    settings_ = load(gpu_energy_interval_s=0.2, canary_share=0.1)
    router = build_router(settings_, build_hooks(settings_))
    assert [b.energy.interval_s for b in (router.champion, router._challenger)] == [0.2, 0.2]
    off = EnergyMeter(0, nvml=PoweredNvml())
    asyncio.run(off.start())
    assert off.attributor is None
