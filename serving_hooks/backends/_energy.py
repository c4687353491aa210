"""GPU energy metering for the in-process backend: each generation's share of its GPU's energy counter.

The shares come from :mod:`telemetry.gpu_energy` (one attributor per process, started with the first
in-process backend and stopped with the last). The worker thread that runs the model opens and closes a
generation's share, so the event loop makes no NVML call; :meth:`EnergyMeter.settle`, on the loop, puts
the figures on the request context (the usage ledger's ``gpu_seconds``/``gpu_joules``) and adds them to
``observatory.gen_ai.server.energy`` and ``observatory.gen_ai.server.gpu.time``. A model that is not on
a GPU, or a host without NVML, leaves the context's figures None.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from gpt_observatory.serving_hooks.inference import ModelInfo
from gpt_observatory.telemetry import gpu_energy, names
from gpt_observatory.telemetry.gpu_energy import EnergyAttributor, Share
from gpt_observatory.telemetry.summed import SummedCounter

SETTLE_WAIT_S = 1.0  # how long a finished stream waits for its share (a worker's NVML read: ~ms)


class EnergyMeter:
    """One in-process backend's use of the process's :class:`~telemetry.gpu_energy.EnergyAttributor`."""

    def __init__(self, interval_s: float = gpu_energy.DEFAULT_INTERVAL_S, nvml: Any = None) -> None:
        """``interval_s``: the sampler's interval (0: no attribution); ``nvml`` stands in for ``pynvml``."""
        self.interval_s = interval_s
        self.attributor: EnergyAttributor | None = None
        self._nvml = nvml
        self._joules = SummedCounter.of(__name__, names.GEN_AI_SERVER_ENERGY)
        self._seconds = SummedCounter.of(__name__, names.GEN_AI_SERVER_GPU_TIME)

    async def start(self) -> None:
        if self.interval_s > 0 and self.attributor is None:
            self.attributor = await asyncio.to_thread(gpu_energy.acquire, self.interval_s, self._nvml)

    def close(self) -> None:
        if self.attributor is not None:
            gpu_energy.release(self.attributor)
            self.attributor = None

    def share(self, gpu: tuple[int, str | None] | None, prompt: str, live: bool) -> Share | None:
        """A new generation's share (opened by the worker), or None when nothing is measured."""
        attributor = self.attributor
        if attributor is None or gpu is None:
            return None
        device = attributor.device(*gpu)
        if device is None:
            return None
        # The reference models' tokenizer is byte-level: the prompt's tokens are its bytes (a weight only).
        return Share(device, live, tokens=len(prompt.encode("utf-8", "surrogatepass")))

    def run(self, share: Share | None, predict: Callable[[Any], Any], rows: Any) -> Any:
        """``predict(rows)`` inside ``share`` (in the worker thread)."""
        attributor = self.attributor
        if attributor is None or share is None:
            return predict(rows)
        attributor.open(share)
        try:
            return predict(rows)
        finally:
            attributor.close(share)

    def stream(self, share: Share, make: Callable[[], Iterator[dict]], closed: Callable[[], None]) -> Iterator[dict]:
        """The model's stream inside ``share``, iterated by the worker; ``closed()`` once the share is."""
        attributor = self.attributor
        if attributor is not None:
            attributor.open(share)
        try:
            yield from make()
        finally:
            if attributor is not None:
                attributor.close(share)
            closed()

    def settle(self, ctx: Any, model: str, info: ModelInfo, share: Share | None) -> None:
        """A closed share's figures on the request context and the energy counters (on the loop)."""
        if share is None or not (share.opened and share.closed):
            return
        attrs: dict[str, Any] = {names.GEN_AI_REQUEST_MODEL: model}
        if info.version is not None:
            attrs[names.MODEL_VERSION] = info.version
        if ctx is not None:
            ctx.gpu_seconds, ctx.gpu_joules = share.seconds, share.joules
            attrs[names.TENANT] = ctx.tenant  # as on observatory.gateway.tokens: J/token divides label by label
        self._joules.add(share.joules, attrs)
        self._seconds.add(share.seconds, attrs)


def model_gpu(model: Any) -> tuple[int, str | None] | None:
    """(CUDA index, UUID) of the GPU ``model`` says it runs on (its ``device``, or its MLflow python
    model's); None for a model on the CPU or one that does not say."""
    inner = model
    unwrap = getattr(model, "unwrap_python_model", None)
    if unwrap is not None:
        with contextlib.suppress(Exception):
            inner = unwrap()
    device = str(getattr(inner, "device", "") or "")
    if not device.startswith("cuda"):
        return None
    torch = sys.modules.get("torch")
    ready = torch is not None and torch.cuda.is_initialized()
    try:
        index = int(device.partition(":")[2]) if ":" in device else (torch.cuda.current_device() if ready else 0)
    except ValueError:
        return None
    uuid = None
    if ready:
        with contextlib.suppress(Exception):
            uuid = str(torch.cuda.get_device_properties(index).uuid)
    return index, uuid
