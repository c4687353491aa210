"""In-process generation with a model object that has the reference pyfunc interface:
``predict(list[dict]) -> list[dict]`` and ``predict_stream(dict) -> Iterator[dict]``.

Generation runs in a bounded thread pool so the event loop never blocks. The loaded model is
one reference swapped atomically (:meth:`InProcessBackend.swap`): a request keeps the model it
started with, so a hot-swap never fails a request in flight. A model on a GPU has each generation's
GPU-seconds and joules attributed (:mod:`._energy`): a streamed answer waits for them after ``[DONE]``
went out, so the usage ledger's row has them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from gpt_observatory.generation import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE
from gpt_observatory.serving_hooks import _errors
from gpt_observatory.serving_hooks._openai import (
    ChatCompletionRequest,
    ChunkWriter,
    chat_prompt,
    completion_prompt,
    new_id,
)
from gpt_observatory.serving_hooks._openai import response_body as build_response
from gpt_observatory.serving_hooks.backends._energy import SETTLE_WAIT_S, EnergyMeter, model_gpu
from gpt_observatory.serving_hooks.backends._streaming import Departure, EventStream
from gpt_observatory.serving_hooks.backends._threads import iterate_in_thread
from gpt_observatory.serving_hooks.backends.base import Call, ModelBackend, Readiness
from gpt_observatory.serving_hooks.inference import GenAIHooks, GenAIRequest, Generation, GenerationStats, ModelInfo
from gpt_observatory.telemetry.gpu_energy import DEFAULT_INTERVAL_S, Share


@dataclass(frozen=True, slots=True)
class LoadedModel:
    model: Any  # has predict / predict_stream
    info: ModelInfo
    gpu: tuple[int, str | None] | None = None  # (CUDA index, UUID) of the model's GPU; None: not on one


class InProcessBackend(ModelBackend):
    """Serves one model object in this process under the id ``served_name``."""

    def __init__(
        self,
        hooks: GenAIHooks,
        served_name: str,
        *,
        model: Any = None,
        info: ModelInfo | None = None,
        workers: int = 8,
        role: str = "champion",
        energy_interval_s: float = DEFAULT_INTERVAL_S,
        nvml: Any = None,
    ) -> None:
        """``energy_interval_s``: the GPU energy sampler's interval (0: none); ``nvml`` stands in for ``pynvml``."""
        self.hooks = hooks
        self.served_name = served_name
        self.role = role
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._current: LoadedModel | None = None
        self.energy = EnergyMeter(energy_interval_s, nvml)
        if model is not None:
            self.swap(model, info or ModelInfo(served_name, role=role))

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def swap(self, model: Any, info: ModelInfo) -> None:
        """Serve ``model`` from the next request on; requests in flight finish on the old one."""
        self._current = LoadedModel(model, info, model_gpu(model))

    async def start(self) -> None:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"gen-{self.role}")
        await self.energy.start()

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.energy.close()

    async def readiness(self) -> Readiness:
        loaded = self._current
        if loaded is None:
            return Readiness(False, "unavailable", "no model loaded")
        return Readiness(True, "ok", info=_describe(loaded.info))

    async def models(self) -> list[dict[str, Any]]:
        return [{"id": self.served_name, "object": "model", "created": 0, "owned_by": "observatory"}]

    async def handle(self, call: Call) -> Response:
        request = call.request
        if request.model != self.served_name:
            raise _errors.model_not_found(request.model)
        loaded = self._current
        if loaded is None or self._pool is None:
            raise _errors.not_ready("the model is still loading")
        if call.ctx is not None:
            call.ctx.model = loaded.info  # the gateway's SERVER span names the version and role
        capture = self.hooks.capture_content
        if isinstance(request, ChatCompletionRequest):
            prompt = chat_prompt(request.messages)
            captured: Any = [m.model_dump(exclude_none=True) for m in request.messages] if capture else None
        else:
            prompt = completion_prompt(request.prompt)
            captured = prompt if capture else None
        payload = {
            "prompt": prompt,
            "max_tokens": request.limit() or DEFAULT_MAX_TOKENS,
            "temperature": DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
        }
        genai = GenAIRequest(
            call.operation, request.model, payload["max_tokens"], payload["temperature"], request.top_p,
            request.stream, captured,
        )
        generation = self.hooks.generation(genai, loaded.info, call.ctx)
        share = self.energy.share(loaded.gpu, prompt, live=request.stream)
        if request.stream:
            return EventStream(lambda departure: self._stream(call, loaded, payload, generation, departure, share))
        with generation as gen:
            try:
                out = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self.energy.run, share, loaded.model.predict, [payload])
            finally:
                self.energy.settle(call.ctx, request.model, loaded.info, share)
            row = _first_row(out)
            rid = new_id(call.operation)
            finish = row.get("finish_reason") or "length"
            gen.record(GenerationStats(
                int(row["prompt_tokens"]), int(row["completion_tokens"]), (finish,), rid, self.served_name,
                row["text"] if self.hooks.capture_content else None,
            ))
        body = build_response(
            call.operation, rid, self.served_name, row["text"], finish,
            int(row["prompt_tokens"]), int(row["completion_tokens"]),
        )
        return Response(body, media_type="application/json")

    async def _stream(
        self, call: Call, loaded: LoadedModel, payload: dict, gen: Generation, departure: Departure,
        share: Share | None = None,
    ) -> AsyncIterator[bytes]:
        """Relay the model's tokens; a stream that does not finish normally is an error everywhere
        (an SSE error event when one can still be sent, ``ctx.error_type``, the GenAI span), except
        a client that left. The prompt is charged whatever happens: it reached the model."""
        writer = ChunkWriter(call.operation, new_id(call.operation), self.served_name)
        include_usage = call.request.include_usage
        capture = self.hooks.capture_content
        pieces: list[str] = []
        # The reference models' tokenizer is byte-level: the prompt's tokens are its bytes.
        stats = GenerationStats(len(payload["prompt"].encode("utf-8", "surrogatepass")), None, (), writer.rid, self.served_name)
        failure: str | None = None
        make: Callable[[], Iterator[dict]] = lambda: loaded.model.predict_stream(payload)  # noqa: E731
        settled: asyncio.Event | None = None
        if share is not None:
            settled = asyncio.Event()
            make = self._metered(call, loaded, share, make, settled)
        try:
            head = writer.role()
            if head:
                yield head
            last: dict = {}
            items = iterate_in_thread(self._pool, make)
            try:
                async with contextlib.aclosing(items):
                    async for item in items:
                        if item.get("finish_reason") is not None:
                            last = item
                            if item.get("text"):  # bytes a streaming decoder held back
                                yield writer.text(item["text"])
                            break
                        gen.token()  # TTFT and per-token timing at the token really sent
                        if share is not None:
                            share.add()  # the interval's weight in the energy split
                        if capture:
                            pieces.append(item["text"])
                        yield writer.text(item["text"])
            except Exception as e:  # headers are sent: the error goes in the stream, OpenAI-style
                failure = type(e).__qualname__
                yield writer.error("generation failed", "generation_failed")
                return
            if not last:  # the model's iterator ended without its final item
                failure = "stream_truncated"
                yield writer.error("the model ended the stream before it finished", "generation_failed")
                return
            finish = last.get("finish_reason") or "length"
            stats.input_tokens = int(last.get("prompt_tokens", stats.input_tokens))
            stats.output_tokens = int(last.get("completion_tokens", gen.tokens))
            stats.finish_reasons = (finish,)
            yield writer.finish(finish)
            if include_usage:
                yield writer.usage(stats.input_tokens, stats.output_tokens)
            yield writer.DONE
            if settled is not None:  # the worker closes the share as the model's iterator ends
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(settled.wait(), SETTLE_WAIT_S)
        except BaseException as e:  # cancelled: the client left (not ours), or the server is stopping
            if failure is None and not departure.gone:
                failure = type(e).__qualname__
            raise
        finally:
            if failure is not None:
                gen.fail(failure)
                if call.ctx is not None:
                    call.ctx.error_type = failure
            if capture:
                stats.completion = "".join(pieces)
            gen.record(stats)
            gen.end()

    def _metered(
        self, call: Call, loaded: LoadedModel, share: Share, make: Callable[[], Iterator[dict]], settled: asyncio.Event
    ) -> Callable[[], Iterator[dict]]:
        """``make`` inside the generation's energy share; once the worker closed it, its figures go on the
        context on the loop (later than the row for a stream the client left: then the row has none)."""
        loop = asyncio.get_running_loop()

        def settle() -> None:
            self.energy.settle(call.ctx, call.request.model, loaded.info, share)
            settled.set()

        def closed() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle)

        return lambda: self.energy.stream(share, make, closed)


def _first_row(out: Any) -> dict:
    if hasattr(out, "to_dict"):  # a pandas DataFrame
        out = out.to_dict("records")
    return dict(out[0])


def _describe(info: ModelInfo) -> dict[str, Any]:
    return {"name": info.name, "version": info.version, "alias": info.alias, "role": info.role}
