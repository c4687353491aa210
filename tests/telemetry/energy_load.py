"""Two tenants with different prompt lengths through the real gateway, the usage ledger and the
in-process backend, for the GPU energy checks (``test_gpu_energy.py`` and ``bench/energy.py``).

:func:`measure` serves the reference TinyGPT (random weights; ``context`` wide enough that a long
prompt costs more per output token) with real uvicorn, sends the tenants' requests from a few
concurrent clients (half of them streamed), reads the model's GPU energy counter just before the first
and just after the last request, and reads the ledger's rows once the app has shut down: J/token per
tenant from the rows, and their attributed joules against the counter's increase.
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gpt_observatory.serving_hooks.apikeys import ApiKeyStore
from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.backends.base import ModelRouter
from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
from gpt_observatory.serving_hooks.inference import GenAIHooks, ModelInfo
from gpt_observatory.serving_hooks.settings import load
from tests.serving_hooks.support import serve

PROMPTS = {"short": "hi " * 5, "long": "the quick brown fox jumps over the lazy dog " * 20}  # 15 and 880 bytes
WARM_UP = "warm-up"  # a tenant of its own, left out of the figures


class TinyGpt:
    """The reference TinyGPT behind the backend's interface (``predict(rows)``, ``predict_stream(row)``).
    ``says_device``: the ``device`` it reports (a CPU run that stands for a GPU one, with a fake NVML)."""

    def __init__(self, device: str = "cuda", says_device: str | None = None, **config: int) -> None:
        import torch

        from gpt_observatory.flows.model import gpt, pyfunc

        torch.manual_seed(0)
        shape = {"context": 1024, "n_layer": 8, "n_head": 16, "d_model": 1024, **config}
        self.wrapper = pyfunc.load_model(gpt.TinyGPT(gpt.GPTConfig(**shape)).to(device))
        self.device = says_device or self.wrapper.device

    def predict(self, rows: Any) -> list[dict]:
        return self.wrapper.predict(None, rows)

    def predict_stream(self, row: dict) -> Any:
        return self.wrapper.predict_stream(None, row)


@dataclass
class EnergyRun:
    tenants: dict[str, dict[str, float]]  # tenant -> requests, output_tokens, gpu_joules, gpu_seconds, j_per_token
    attributed_j: float  # the tenants' rows' gpu_joules, summed
    nvml_delta_j: float  # the model's GPU counter: just after the last request less just before the first
    idle_j: float  # what the attributor counted as idle in that window
    rows_without_energy: int  # rows of the tenants with gpu_joules None

    @property
    def ratio(self) -> float:
        return self.attributed_j / self.nvml_delta_j if self.nvml_delta_j else float("nan")


def measure(state: Path, model: Any, *, nvml: Any = None, requests: int = 32, clients: int = 4,
            max_tokens: int = 64) -> EnergyRun:
    """Serve ``model`` and send ``requests`` per tenant (module docstring); ``nvml`` stands in for pynvml."""
    import pynvml

    nvml = nvml or pynvml
    state.mkdir(parents=True, exist_ok=True)
    keys = ApiKeyStore(state / "api-keys.json")
    tokens = {tenant: keys.create(tenant, ["inference"])[0] for tenant in (*PROMPTS, WARM_UP)}
    settings = load(api_keys_file=state / "api-keys.json", ledger_enabled=True,
                    ledger_url=str(state / "ledger.sqlite3"), ledger_spool_dir=state / "spool")
    backend = InProcessBackend(GenAIHooks("server"), "tiny-gpt", model=model, info=ModelInfo("tiny-gpt", "1"),
                               workers=clients, nvml=nvml)
    app = create_app(settings, router=ModelRouter({"champion": backend}))

    def ask(http: httpx.Client, tenant: str, prompt: str, stream: bool) -> None:
        body = {"model": "tiny-gpt", "prompt": prompt, "max_tokens": max_tokens, "stream": stream}
        auth = {"authorization": f"Bearer {tokens[tenant]}"}
        with http.stream("POST", "/completions", json=body, headers=auth) as r:
            r.read()
            assert r.status_code == 200, (r.status_code, r.text[:200])

    with serve(app) as gw, httpx.Client(base_url=gw.v1, timeout=120) as http:
        attributor = backend.energy.attributor
        assert attributor is not None, "no GPU energy attribution: no NVML or no GPU"
        assert backend.current is not None and backend.current.gpu is not None, "the model is not on a GPU"
        device = attributor.device(*backend.current.gpu)
        assert device is not None, f"the model's GPU {backend.current.gpu} is not one NVML lists"
        handle = nvml.nvmlDeviceGetHandleByIndex(device)
        for stream in (False, True):
            ask(http, WARM_UP, PROMPTS["long"], stream)
        work = [(tenant, prompt, i % 2 == 1) for i in range(requests) for tenant, prompt in PROMPTS.items()]
        idle0 = attributor.idle_j
        before = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda w: ask(http, *w), work))
        after = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        idle = attributor.idle_j - idle0
    db = sqlite3.connect(state / "ledger.sqlite3")
    rows = db.execute("SELECT tenant, output_tokens, gpu_joules, gpu_seconds FROM usage WHERE tenant != ?",
                      (WARM_UP,)).fetchall()
    db.close()
    tenants: dict[str, dict[str, float]] = {}
    for tenant, out, joules, seconds in rows:
        t = tenants.setdefault(tenant, {"requests": 0, "output_tokens": 0, "gpu_joules": 0.0, "gpu_seconds": 0.0})
        t["requests"] += 1
        t["output_tokens"] += out
        t["gpu_joules"] += joules or 0.0
        t["gpu_seconds"] += seconds or 0.0
    for t in tenants.values():
        t["j_per_token"] = t["gpu_joules"] / t["output_tokens"] if t["output_tokens"] else float("nan")
    return EnergyRun(tenants, sum(t["gpu_joules"] for t in tenants.values()), (after - before) / 1000, idle,
                     sum(1 for _, _, joules, _ in rows if joules is None))
