"""The live catalog: the running backends of every catalog entry, swapped whole on a reload.

:class:`CatalogRouter` is what the app and the gateway ask about models: whether a name is served
(``in``), its bounds, its prompt estimate, the OpenAI model list a caller's scopes allow, readiness,
and, per call, who answers (:meth:`select`: the entry, or one of its fallbacks, as
:mod:`serving_hooks._catalog_dispatch` decides).

A reload (:meth:`reload`) builds and starts the backends of new or changed entries, keeps those of
unchanged ones, swaps the whole version in one assignment (a request sees the old catalog or the
new, never a mix), and closes the old backends only once the requests they were serving are done
(at most ``drain_timeout_s``). A new catalog whose backends do not start leaves the old one serving.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from loguru import logger
from opentelemetry import trace

from gpt_observatory.serving_hooks import _errors
from gpt_observatory.serving_hooks._catalog_dispatch import Dispatch, Fallbacks, Served, visible
from gpt_observatory.serving_hooks.backends.base import Call, ModelRouter
from gpt_observatory.serving_hooks.catalog import Catalog, ModelEntry
from gpt_observatory.serving_hooks.context import RequestContext
from gpt_observatory.serving_hooks.gateway import Bounds
from gpt_observatory.telemetry.settings import ConfigError

if TYPE_CHECKING:
    from gpt_observatory.serving_hooks.tenants import Tenant

Build = Callable[[ModelEntry, Catalog], ModelRouter]


class _Version:
    """One catalog and its running entries, by public name and by every name that resolves."""

    def __init__(self, catalog: Catalog, served: Mapping[str, Served]) -> None:
        self.catalog = catalog
        self.served = dict(served)
        self.lookup = {name: s for s in self.served.values() for name in s.entry.names}


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
        self._fallbacks = Fallbacks()

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
    def select(self, call: Call) -> Dispatch:
        version = self._version
        served = version.lookup.get(call.request.model)
        if served is None or not visible(served.entry, call.ctx):  # a scope the caller lacks: not there for it
            raise _errors.model_not_found(call.request.model)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(served.attributes)
        return Dispatch(served, version.lookup, self._fallbacks)

    # ------------------------------------------------------------------ listing and readiness
    def models(self, ctx: RequestContext | None, tenant: Tenant | None = None) -> list[dict[str, Any]]:
        """OpenAI model cards of every name the caller may use (public names and aliases): those its
        scopes allow and, given its ``tenant`` policy, that the tenants table allows it too (the
        gateway's own check, :meth:`Tenant.may_call_entry`)."""
        return [{"id": name, "object": "model", "created": 0, "owned_by": "observatory"}
                for s in self._version.served.values()
                if visible(s.entry, ctx) and (tenant is None or tenant.may_call_entry(s.entry.names))
                for name in s.entry.names]

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


__all__ = ["CatalogRouter"]
