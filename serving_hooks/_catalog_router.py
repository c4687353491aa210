"""The live catalog: the running backends of every catalog entry, swapped whole on a reload.

:class:`CatalogRouter` is what the app and the gateway ask about models: whether a name is served
(``in``), its bounds, its prompt estimate, the OpenAI model list a caller's scopes allow, readiness,
and, per call, the backend that answers (:meth:`select`), falling back to the first of the entry's
``fallbacks`` with a healthy replica when its own pool has none (an event and an attribute on the
gateway's span, and a counter), else the pool's 503.

A reload (:meth:`reload`) builds and starts the backends of new or changed entries, keeps those of
unchanged ones, swaps the whole version in one assignment (a request sees the old catalog or the
new, never a mix), and closes the old backends only once the requests they were serving are done
(at most ``drain_timeout_s``). A new catalog whose backends do not start leaves the old one serving.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson
from loguru import logger
from opentelemetry import metrics, trace
from starlette.types import Receive, Scope, Send

from gpt_observatory.serving_hooks import _errors
from gpt_observatory.serving_hooks.backends.base import Call, ModelRouter
from gpt_observatory.serving_hooks.catalog import Catalog, ModelEntry
from gpt_observatory.serving_hooks.context import RequestContext
from gpt_observatory.serving_hooks.gateway import Bounds
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.settings import ConfigError

Build = Callable[[ModelEntry, Catalog], ModelRouter]


def _no_healthy_error() -> type[Exception]:
    """The pool's "no replica can take it" error (an ApiError 503), when the pool module is there."""
    try:
        from gpt_observatory.serving_hooks.backends.pool import NoHealthyReplica
    except ImportError:  # pragma: no cover - before the pools landed
        return _Never
    return NoHealthyReplica


class _Never(Exception):
    pass


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


class _Version:
    """One catalog and its running entries, by public name and by every name that resolves."""

    def __init__(self, catalog: Catalog, served: Mapping[str, Served]) -> None:
        self.catalog = catalog
        self.served = dict(served)
        self.lookup = {name: s for s in self.served.values() for name in s.entry.names}


def visible(entry: ModelEntry, ctx: RequestContext | None) -> bool:
    """Whether the caller may see and call ``entry``: no scope required, or the caller holds it
    (without the gateway in front, nobody is checked)."""
    if entry.scope is None or ctx is None:
        return True
    return ctx.principal is not None and entry.scope in getattr(ctx.principal, "scopes", ())


class CatalogRouter:
    """The running catalog (see the module docstring). ``routers``: ready-made routers for entries by
    name (``create_app(router=...)``), used instead of building them."""

    def __init__(self, catalog: Catalog, build: Build, *, routers: Mapping[str, ModelRouter] | None = None,
                 drain_timeout_s: float = 30.0) -> None:
        self._build = build
        self._drain_timeout_s = drain_timeout_s
        given = routers or {}
        self._version = _Version(catalog, {
            e.name: self._served(e, catalog, given.get(e.name) or build(e, catalog)) for e in catalog
        })
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        m = names.GATEWAY_FALLBACKS
        self._fallbacks = metrics.get_meter(__name__).create_counter(m.name, m.unit, m.description)
        self._no_healthy = _no_healthy_error()

    @staticmethod
    def _served(entry: ModelEntry, catalog: Catalog, router: ModelRouter) -> Served:
        return Served(entry, router, catalog.bounds(entry), None if catalog.legacy else entry.backend_model)

    @property
    def catalog(self) -> Catalog:
        return self._version.catalog

    # ------------------------------------------------------------------ what the gateway asks
    def __contains__(self, name: object) -> bool:
        return name in self._version.lookup

    def __len__(self) -> int:
        return len(self._version.lookup)

    def __iter__(self) -> Iterator[str]:
        return iter(self._version.lookup)

    def bounds(self, name: str) -> Bounds | None:
        served = self._version.lookup.get(name)
        return served.bounds if served is not None else None

    def estimate_tokens(self, body: Mapping[str, Any]) -> int:
        version = self._version
        served = version.lookup.get(body.get("model")) or next(iter(version.served.values()))  # type: ignore[arg-type]
        return served.router.estimate_tokens(body)

    @property
    def champion(self) -> Any:
        """The first entry's champion backend (what a single-model app had as ``router.champion``)."""
        return next(iter(self._version.served.values())).router.champion

    # ------------------------------------------------------------------ per call
    def select(self, call: Call) -> _Dispatch:
        version = self._version
        served = version.lookup.get(call.request.model)
        if served is None or not visible(served.entry, call.ctx):  # a scope the caller lacks: not there for it
            raise _errors.model_not_found(call.request.model)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(served.attributes)
        return _Dispatch(self, version, served)

    def _fell_back(self, primary: Served, target: Served) -> None:
        attrs = {names.CATALOG_MODEL: primary.entry.name, names.FALLBACK_MODEL: target.entry.name}
        self._fallbacks.add(1, attrs)
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(names.EVENT_FALLBACK, attrs)
            span.set_attribute(names.FALLBACK_MODEL, target.entry.name)

    # ------------------------------------------------------------------ listing and readiness
    def models(self, ctx: RequestContext | None) -> list[dict[str, Any]]:
        """OpenAI model cards of every name the caller may use (public names and aliases)."""
        return [{"id": name, "object": "model", "created": 0, "owned_by": "observatory"}
                for s in self._version.served.values() if visible(s.entry, ctx) for name in s.entry.names]

    async def readiness(self) -> tuple[dict[str, Any], bool]:
        """The ``/readyz`` body and whether the gateway is ready: one model, exactly its readiness; several,
        ready while any is (``degraded`` when some are not), each under ``models``."""
        per: dict[str, dict[str, Any]] = {}
        for name, served in self._version.served.items():
            ready = await served.router.champion.readiness()
            body = {"status": ready.status, "ready": ready.ready, "detail": ready.detail, "model": ready.info}
            canary = getattr(served.router, "canary_status", None)
            if canary is not None:
                body["canary"] = canary()
            per[name] = body
        if len(per) == 1:
            body = dict(next(iter(per.values())))
            return {**body, "models": per}, body["ready"]
        up = [n for n, b in per.items() if b["ready"]]
        down = [n for n in per if n not in up]
        worst = all(b["status"] == "ok" for b in per.values())
        status = "ok" if worst else "degraded" if up else "unavailable"
        detail = f"not ready: {', '.join(down)}" if down else ""
        return {"status": status, "ready": bool(up), "detail": detail, "model": None, "models": per}, bool(up)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        for served in self._version.served.values():
            await served.router.start()

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for served in self._version.served.values():
            await served.router.close()

    async def reload(self, catalog: Catalog) -> str:
        """Serve ``catalog`` from now on; returns the outcome (``ok``, or ``invalid``/``failed`` with the
        old catalog still serving)."""
        async with self._lock:
            old = self._version
            started: list[Served] = []
            served: dict[str, Served] = {}
            try:
                for entry in catalog:
                    same = old.served.get(entry.name)
                    if same is not None and same.entry == entry and not old.catalog.legacy:
                        served[entry.name] = same
                        continue
                    fresh = self._served(entry, catalog, self._build(entry, catalog))
                    started.append(fresh)
                    await fresh.router.start()
                    served[entry.name] = fresh
            except BaseException as e:
                for fresh in started:
                    with contextlib.suppress(Exception):
                        await fresh.router.close()
                if not isinstance(e, Exception):
                    raise
                invalid = isinstance(e, ConfigError)
                logger.error("catalog reload from {} {}: {}; the previous catalog keeps serving", catalog.source,
                             "refused" if invalid else "failed", e)
                return "invalid" if invalid else "failed"
            self._version = _Version(catalog, served)  # the swap: one assignment
            kept = {id(s) for s in served.values()}
            for gone in old.served.values():
                if id(gone) not in kept:
                    task = asyncio.create_task(self._retire(gone), name=f"catalog-retire-{gone.entry.name}")
                    self._retiring.add(task)
                    task.add_done_callback(self._retiring.discard)
            logger.info("catalog reloaded from {}: serving {}", catalog.source, ", ".join(served))
            return "ok"

    async def _retire(self, served: Served) -> None:
        """Close a replaced entry's backends once its requests are done (or the drain time is up)."""
        try:
            await asyncio.wait_for(served.idle.wait(), self._drain_timeout_s)
        except TimeoutError:
            logger.warning("model {!r}: {} request(s) still running after {:g} s; closing its old backends",
                           served.entry.name, served.inflight, self._drain_timeout_s)
        await served.router.close()


class _Dispatch:
    """One call's backend: the entry, or its first fallback with a healthy replica."""

    __slots__ = ("catalog", "served", "version")

    def __init__(self, catalog: CatalogRouter, version: _Version, served: Served) -> None:
        self.catalog = catalog
        self.version = version
        self.served = served

    async def handle(self, call: Call) -> Any:
        primary = self.served
        if not primary.entry.fallbacks:
            return await self._serve(primary, call)
        lookup = self.version.lookup
        chain = [primary, *(s for f in primary.entry.fallbacks
                            if (s := lookup.get(f)) is not None and visible(s.entry, call.ctx))]
        no_healthy = self.catalog._no_healthy
        refused: Exception | None = None  # the primary's own 503, once it was tried
        for target in chain:
            if not target.healthy():
                continue
            try:
                response = await self._serve(target, call)
            except no_healthy as e:  # its last replica failed, or went since the check: nothing was sent
                if target is primary:
                    refused = e
                continue
            if target is not primary:
                self.catalog._fell_back(primary, target)
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
        return _Tracked(response, target)


class _Tracked:
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


__all__ = ["CatalogRouter", "Served", "visible"]
