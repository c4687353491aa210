"""One call through the catalog: the entry that serves it, or its first usable fallback.

:class:`Served` is one entry's running router with the requests it is serving counted, so a reload
closes it only once they are done (:class:`Tracked` tells it when a response has been sent, a
stream at its end). :class:`Dispatch` answers a call from its entry or, when the entry's pool has
no healthy replica (known before the call, or :class:`~serving_hooks.backends.pool.NoHealthyReplica`
raised before anything was sent), from the first of its ``fallbacks`` the caller may see, whose
bounds the request fits and that has a healthy replica; :class:`Fallbacks` records that on the
gateway span (an event and an attribute) and counts it. With none, the entry's own 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from opentelemetry import metrics, trace
from starlette.types import Receive, Scope, Send

from gpt_observatory.serving_hooks._errors import ApiError
from gpt_observatory.serving_hooks.backends.base import Call, ModelRouter
from gpt_observatory.serving_hooks.backends.pool import NoHealthyReplica
from gpt_observatory.serving_hooks.catalog import ModelEntry
from gpt_observatory.serving_hooks.context import RequestContext
from gpt_observatory.serving_hooks.gateway import Bounds, hold
from gpt_observatory.telemetry import names


class Served:
    """One entry's running router, with the requests it is serving counted (to close it when idle)."""

    def __init__(self, entry: ModelEntry, router: ModelRouter, bounds: Bounds, rewrite: str | None) -> None:
        self.entry = entry
        self.router = router
        self.bounds = bounds
        self.rewrite = rewrite  # the model id its backend answers to; None: the caller's, as sent
        self.health: Callable[[], bool] | None = getattr(router.champion, "has_healthy", None)
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.attributes = {names.CATALOG_MODEL: entry.name,
                           **{names.CATALOG_LABEL_PREFIX + k: v for k, v in entry.labels.items()}}

    def healthy(self) -> bool:
        return self.health is None or self.health()

    def acquire(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()

    def call_for(self, call: Call) -> Call:
        """``call`` naming the model id this entry's backend answers to (an alias or a fallback's caller
        named another)."""
        model = self.rewrite
        if model is None or call.request.model == model:
            return call
        ctx = call.ctx
        fields = dict(ctx.json) if ctx is not None and ctx.json is not None else orjson.loads(call.raw)
        fields["model"] = model
        raw = orjson.dumps(fields)
        if ctx is not None:  # the upstream proxy rebuilds its body from ctx.json when it changes it
            ctx.json, ctx.body = fields, raw
        return Call(call.operation, call.request.model_copy(update={"model": model}), raw, ctx)

    def fits(self, call: Call) -> bool:
        """Whether ``call`` is within this entry's bounds (a fallback may have tighter ones)."""
        ctx = call.ctx
        prompt = self.router.estimate_tokens(ctx.json) if ctx is not None and ctx.json is not None else 0
        try:
            hold(call.request, prompt, self.bounds)
        except ApiError:
            return False
        return True


def visible(entry: ModelEntry, ctx: RequestContext | None) -> bool:
    """Whether the caller may see and call ``entry``: no scope required, or the caller holds it
    (without the gateway in front, nobody is checked)."""
    if entry.scope is None or ctx is None:
        return True
    return ctx.principal is not None and entry.scope in getattr(ctx.principal, "scopes", ())


class Fallbacks:
    """Records a fallback: an event and an attribute on the gateway span, and a counter."""

    def __init__(self) -> None:
        m = names.GATEWAY_FALLBACKS
        self._counter = metrics.get_meter(__name__).create_counter(m.name, m.unit, m.description)

    def record(self, primary: Served, target: Served) -> None:
        attrs = {names.CATALOG_MODEL: primary.entry.name, names.FALLBACK_MODEL: target.entry.name}
        self._counter.add(1, attrs)
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(names.EVENT_FALLBACK, attrs)
            span.set_attribute(names.FALLBACK_MODEL, target.entry.name)


class Dispatch:
    """One call's backend: the entry, or its first fallback with a healthy replica."""

    __slots__ = ("fallbacks", "lookup", "served")

    def __init__(self, served: Served, lookup: Mapping[str, Served], fallbacks: Fallbacks) -> None:
        self.served = served
        self.lookup = lookup  # the catalog version the call was admitted in
        self.fallbacks = fallbacks

    async def handle(self, call: Call) -> Any:
        primary = self.served
        if not primary.entry.fallbacks:
            return await self._serve(primary, call)
        lookup = self.lookup
        chain = [primary, *(s for f in primary.entry.fallbacks
                            if (s := lookup.get(f)) is not None and visible(s.entry, call.ctx) and s.fits(call))]
        refused: NoHealthyReplica | None = None  # the primary's own 503, once it was tried
        for target in chain:
            if not target.healthy():
                continue
            try:
                response = await self._serve(target, call)
            except NoHealthyReplica as e:  # its last replica failed, or went since the check: nothing was sent
                if target is primary:
                    refused = e
                continue
            if target is not primary:
                self.fallbacks.record(primary, target)
            return response
        if refused is not None:
            raise refused
        return await self._serve(primary, call)  # nobody healthy: the primary's own answer (503)

    @staticmethod
    async def _serve(target: Served, call: Call) -> Any:
        call = target.call_for(call)
        target.acquire()
        try:
            response = await target.router.select(call).handle(call)
        except BaseException:
            target.release()
            raise
        return Tracked(response, target)


class Tracked:
    """A backend's response that tells its entry when it has been sent (streams: at their end)."""

    __slots__ = ("response", "served")

    def __init__(self, response: Any, served: Served) -> None:
        self.response = response
        self.served = served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.response(scope, receive, send)
        finally:
            self.served.release()
