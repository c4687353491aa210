"""The reference gateway app: an OpenAI-compatible API behind the gateway middleware.

``create_app(settings)`` returns the ASGI app ``observatory serve`` runs: ``/v1/chat/completions``
and ``/v1/completions`` (SSE streaming or not, ``stream_options.include_usage``), ``/v1/models``,
``/healthz`` (liveness), ``/readyz`` (model loaded; ``degraded`` when the registry is unreachable)
and ``/metrics`` (Prometheus exposition of the registry the telemetry ``prometheus`` backend
fills). With ``admin_port`` set, ``/metrics`` and the docs (``/docs``, ``/redoc``, ``/openapi.json``)
leave the API for an admin app of their own (:func:`create_listeners`); with ``admin_token`` set they
need that bearer token wherever they are (:mod:`serving_hooks.production`, which also holds what
``environment=production`` refuses to start with). The models come from the catalog
(:mod:`serving_hooks.catalog`: ``catalog_file``, else the single-model settings as a one-entry
catalog), served by a :class:`~serving_hooks._catalog_router.CatalogRouter` that reloads on SIGHUP and
when the file changes (:mod:`serving_hooks._catalog_reload`). Each entry is a
:class:`~serving_hooks.backends.base.ModelRouter`: the ``mlflow``
backend serves ``models:/NAME@champion`` in process, the ``upstream`` backend proxies an
OpenAI-compatible server (a :class:`~serving_hooks.backends.pool.ReplicaPool` for an entry's
``replicas``). With a canary configured (``canary_share``/``canary_tenants``) the
``mlflow`` backend also follows the ``challenger`` alias and a
:class:`~serving_hooks.backends.canary.CanaryRouter` splits the traffic; with shadow traffic
(``shadow_share``/``shadow_tenants``) a :class:`~serving_hooks.backends.shadow.ShadowRouter` serves
everyone from the champion and mirrors copies to the challenger.

The layers, outside in: :class:`~serving_hooks.gateway.GatewayMiddleware`, then
:class:`~serving_hooks._completions.CompletionsEndpoint` (the two completion operations, as plain
ASGI), then FastAPI for everything else and for the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from loguru import logger
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from gpt_observatory import telemetry
from gpt_observatory.generation import DEFAULT_MAX_TOKENS
from gpt_observatory.serving_hooks import _completions as completions
from gpt_observatory.serving_hooks import _errors
from gpt_observatory.serving_hooks import catalog as catalogs
from gpt_observatory.serving_hooks._auth_settings import AuthSettings
from gpt_observatory.serving_hooks._catalog_backends import (
    build_backend,
    build_entry,
    build_hooks,
    build_router,
    served_models,
)
from gpt_observatory.serving_hooks._catalog_reload import CatalogReloader
from gpt_observatory.serving_hooks._catalog_router import CatalogRouter
from gpt_observatory.serving_hooks._completions import CompletionsEndpoint
from gpt_observatory.serving_hooks._errors import ApiError
from gpt_observatory.serving_hooks._openai import ErrorBody, ModelList
from gpt_observatory.serving_hooks.backends.base import ModelRouter
from gpt_observatory.serving_hooks.budgets import Metering, metering_for
from gpt_observatory.serving_hooks.context import request_context
from gpt_observatory.serving_hooks.gateway import Authenticate, GatewayConfig, GatewayMiddleware, no_scopes
from gpt_observatory.serving_hooks.ledger import LedgerMiddleware, mirror_recorder, open_ledger
from gpt_observatory.serving_hooks.production import AdminGuard, admin_app, admin_paths, metrics
from gpt_observatory.serving_hooks.production import check as check_production
from gpt_observatory.serving_hooks.ratelimit import RateLimiter, limiter_for
from gpt_observatory.serving_hooks.settings import ServeSettings
from gpt_observatory.serving_hooks.settings import load as load_settings
from gpt_observatory.telemetry.settings import ConfigError

__all__ = ["Listeners", "auth_settings", "build_authenticator", "build_backend", "build_hooks", "build_router",
           "create_app", "create_listeners", "served_models"]

API_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models"})
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Malformed JSON or an invalid request.",
        401: "Missing or invalid credential (the reason says which check failed).",
        403: "The credential lacks a scope the model requires.",
        404: "The model is not served here.",
        413: "The request body is too large.",
        429: "Rate limit reached; see Retry-After.",
        502: "The upstream model server failed.",
        503: "No model loaded yet.",
        504: "The upstream model server timed out.",
    }.items()
}
_COMPLETION_OK = {"description": "A completion object, or an SSE stream of chunks when `stream` is true.",
                  "content": {"application/json": {}, "text/event-stream": {}}}
_UNSET: Any = object()


@dataclass(frozen=True)
class Listeners:
    """The apps ``observatory serve`` listens with: the API on ``port``, and on ``admin_port`` (when
    set) the admin endpoints, which the API then leaves out."""

    api: ASGIApp
    admin: ASGIApp | None = None


def create_app(
    settings: ServeSettings | None = None,
    *,
    router: ModelRouter | None = None,
    authenticator: Authenticate | None = _UNSET,
    limiter: RateLimiter | None = None,
    instrument: bool = True,
    metering: Metering | None = _UNSET,
) -> ASGIApp:
    """Build the API app (see :func:`create_listeners`; with ``admin_port`` set, its admin app is left out)."""
    return create_listeners(
        settings, router=router, authenticator=authenticator, limiter=limiter, instrument=instrument, metering=metering
    ).api


def create_listeners(
    settings: ServeSettings | None = None,
    *,
    router: ModelRouter | None = None,
    authenticator: Authenticate | None = _UNSET,
    limiter: RateLimiter | None = None,
    instrument: bool = True,
    metering: Metering | None = _UNSET,
) -> Listeners:
    """Build the apps. ``router``/``authenticator``/``limiter`` default to what ``settings`` describe;
    ``instrument=False`` leaves the gateway out (the hooks-off side of ``bench/gateway.py``).
    Refuses (:class:`ConfigError`) what ``environment=production`` does not allow, before building anything."""
    settings = settings or load_settings()
    handle = telemetry.current()
    auth = getattr(authenticator, "settings", None)
    check_production(
        settings, auth if isinstance(auth, AuthSettings) else auth_settings(settings),
        handle.settings if handle is not None else telemetry.settings.load(),
    )
    ledger = open_ledger(settings) if instrument else None  # None: ledger_enabled off
    catalog = build_catalog(settings, router, on_mirror=mirror_recorder(ledger) if ledger is not None else None)
    if authenticator is _UNSET:
        authenticator = build_authenticator(settings)
    if limiter is None:
        limiter = limiter_for(settings)
    if metering is _UNSET:
        metering = metering_for(settings)
    priced = metering if instrument else None  # its prices, checked against the catalog serving
    if priced is not None:
        priced.catalog = lambda: catalog.catalog
    reloader = None
    if settings.catalog_file is not None and router is None:
        reloader = CatalogReloader(catalog, settings.catalog_file, settings, settings.catalog_poll_s,
                                   on_reload=priced.check_prices if priced is not None else None)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if ledger is not None:
            ledger.start()  # rows a killed process left in the spool ship first
        await catalog.start()
        if priced is not None:
            priced.check_prices()
        if reloader is not None:
            await reloader.start()
        warm_up = getattr(authenticator, "warm_up", None)
        if warm_up is not None and not await warm_up():
            logger.warning("could not fetch the OIDC issuer's keys at startup; JWTs are refused until it answers")
        try:
            yield
        finally:
            if reloader is not None:
                await reloader.close()
            await catalog.close()
            if ledger is not None:
                await asyncio.to_thread(ledger.close)  # what is queued goes to the spool, then a last shipment
            if limiter is not None:
                await limiter.close()
            aclose = getattr(authenticator, "aclose", None)
            if aclose is not None:
                await aclose()

    admin_apart = settings.admin_port is not None
    off = {"openapi_url": None, "docs_url": None, "redoc_url": None} if admin_apart else {}
    api = FastAPI(title="Observatory gateway", version=telemetry.__version__, lifespan=lifespan,
                  telemetry=_NATIVE, **off)
    _routes(api, catalog, with_metrics=not admin_apart, metering=metering if instrument else None)
    admin = admin_app(api, _NATIVE, settings) if admin_apart else None
    app: ASGIApp = CompletionsEndpoint(api, catalog)  # type: ignore[arg-type]  # a router of routers
    if instrument:
        app = _gateway(app, settings, catalog, authenticator, limiter, metering)
        if ledger is not None:
            app = LedgerMiddleware(app, ledger)  # outside the gateway: reads its context after its end
    token = settings.admin_token
    if token is not None:
        if admin is not None:
            admin = AdminGuard(admin, token)
        else:
            app = AdminGuard(app, token, admin_paths(api))
    return Listeners(app, admin)


# FastAPI's own telemetry would open a second, unlinked SERVER span and duplicate the HTTP
# metrics; the gateway owns those, and its validation logs could carry request bodies.
_NATIVE = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


def build_catalog(settings: ServeSettings, router: ModelRouter | None = None, *,
                  on_mirror: Callable[[Any], None] | None = None) -> CatalogRouter:
    """The catalog ``settings`` describe (``catalog_file``, else the single model), with its backends
    built; ``router``: the single model's, ready-made (``catalog_file`` is then not read). ``on_mirror``:
    where every shadow router (built now or on a reload) reports its mirrors (the usage ledger)."""
    build = build_entry
    if on_mirror is not None:
        record = on_mirror

        def mirroring(entry: catalogs.ModelEntry, catalog: catalogs.Catalog) -> ModelRouter:
            return _mirrors_to(build_entry(entry, catalog), record)

        build = mirroring
        router = _mirrors_to(router, record) if router is not None else None
    if router is not None or settings.catalog_file is None:
        catalog = catalogs.from_settings(settings)
        routers = {settings.model: router} if router is not None else None
        return CatalogRouter(catalog, build, routers=routers, drain_timeout_s=settings.graceful_timeout_s)
    return CatalogRouter(catalogs.load(settings.catalog_file, settings), build,
                         drain_timeout_s=settings.graceful_timeout_s)


def _mirrors_to(router: ModelRouter, on_mirror: Callable[[Any], None]) -> ModelRouter:
    """``router``, reporting its mirrors to ``on_mirror`` when it mirrors (a shadow router)."""
    if hasattr(router, "on_mirror"):
        router.on_mirror = on_mirror  # type: ignore[attr-defined]
    return router


def _gateway(
    app: ASGIApp, settings: ServeSettings, router: CatalogRouter, authenticator: Authenticate | None,
    limiter: RateLimiter | None, metering: Metering | None = None,
) -> ASGIApp:
    config = GatewayConfig(
        max_request_bytes=settings.max_request_bytes,
        routes=API_ROUTES,
        rate_limit_by=settings.rate_limit_by,
        scopes_for=getattr(authenticator, "scopes_for", no_scopes),
        estimate_tokens=router.estimate_tokens,
        max_n=settings.max_n,
        max_best_of=settings.max_best_of,
        max_tokens_limit=settings.max_tokens_limit,
        context_tokens=settings.context_tokens,
        models=router,  # the live catalog's names and aliases; its bounds per model
        bounds_for=router.bounds,
        # What a request without max_tokens may generate: the in-process model's default; an upstream's
        # own default is not known here, so the worst case reserved is the bound.
        default_max_tokens=DEFAULT_MAX_TOKENS if settings.backend == "mlflow" else None,
    )
    return GatewayMiddleware(app, config, authenticator=authenticator, limiter=limiter, metering=metering)


def auth_settings(settings: ServeSettings) -> AuthSettings:
    """``OBSERVATORY_AUTH_*`` (and ``[auth]``) with the issuer, audience and key file ``settings`` name."""
    return AuthSettings.load(
        issuer=settings.oidc_issuer, audience=settings.audience, api_keys_file=settings.api_keys_file
    )


def build_authenticator(settings: ServeSettings) -> Authenticate | None:
    """The authenticator ``settings`` (and ``OBSERVATORY_AUTH_*``) describe; refuses to run open by accident."""
    from gpt_observatory.serving_hooks.auth import Authenticator

    auth = auth_settings(settings)
    if auth.issuer or auth.api_keys_file:
        return Authenticator(auth)
    if settings.allow_anonymous:
        logger.warning("serving WITHOUT authentication (allow_anonymous): every caller is tenant 'anonymous'")
        return None
    raise ConfigError(
        "no authentication configured: pass --oidc-issuer/--audience or --api-keys-file "
        "(OBSERVATORY_SERVE_OIDC_ISSUER, OBSERVATORY_SERVE_API_KEYS_FILE), or --allow-anonymous for development"
    )


def _document(api: FastAPI) -> None:
    """Complete FastAPI's OpenAPI document: the two completion operations (served by
    :class:`~serving_hooks._completions.CompletionsEndpoint`, not by FastAPI routes) and the bearer
    credential.

    The gateway middleware authenticates, before routing; a FastAPI ``HTTPBearer`` dependency would
    only repeat the header parse on every request (~45 µs, 12 % of a no-op request) to say so in
    the schema, so the schema says it directly.
    """
    generate = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = generate()
            errors = schema["paths"]["/v1/models"]["get"]["responses"]  # _ERRORS, rendered by FastAPI
            completions.document(schema, {**{k: v for k, v in errors.items() if k != "200"},
                                          "200": _COMPLETION_OK})
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["bearer"] = {"type": "http", "scheme": "bearer",
                                 "description": "An OIDC access token or an Observatory API key."}
            for path in API_ROUTES:
                for operation in schema["paths"].get(path, {}).values():
                    operation["security"] = [{"bearer": []}]
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise it


def _routes(api: FastAPI, router: CatalogRouter, *, with_metrics: bool = True, metering: Metering | None = None) -> None:
    _document(api)

    @api.get("/v1/models", response_model=ModelList, responses=_ERRORS)
    async def models(request: Request) -> dict[str, Any]:
        """The models this gateway serves that the caller's scopes allow (and its tenant's entry in the
        tenants table, when there is one)."""
        ctx = request_context(request.scope)
        tenant = None
        if metering is not None and ctx is not None:
            tenant = metering.tenant(ctx.tenant)
            if tenant is None:  # refused by a table reloaded since the gateway admitted the request
                return {"object": "list", "data": []}
        return {"object": "list", "data": router.models(ctx, tenant)}

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @api.get("/readyz", responses={503: {"description": "Not ready: no model loaded or the upstream is down."}})
    async def readyz() -> JSONResponse:
        """Readiness: a model is loaded (``degraded``: serving, but the model registry is unreachable)."""
        body, ready = await router.readiness()
        return JSONResponse(body, status_code=200 if ready else 503)

    if with_metrics:
        api.add_api_route("/metrics", metrics, response_class=Response)

    @api.exception_handler(Exception)  # Starlette's ServerErrorMiddleware: answers, then re-raises to log it
    async def internal_error(request: Request, exc: Exception) -> Response:
        return Response(_errors.internal().body(), status_code=500, media_type="application/json")

    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        ctx = request_context(request.scope)
        if ctx is not None and exc.reason is not None:
            ctx.rejection = exc.reason
        headers = {k.decode(): v.decode() for k, v in exc.headers}
        return Response(exc.body(), status_code=exc.status, headers=headers, media_type="application/json")
