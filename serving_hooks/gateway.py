"""The gateway: pure ASGI middleware in front of the model API.

Per request (paths outside ``excluded_paths``): one SERVER span ``{method} {route}`` continuing
the caller's W3C ``traceparent``; ``http.server.request.duration`` and ``http.server.active_requests``;
a bounded read of the request body (413) and a JSON check (400); on the completion routes the
request validated (400) and held to its model's bounds (``n``, ``best_of``, ``max_tokens``, the
model's context, per model with a catalog: ``GatewayConfig.bounds_for``; 400 naming the setting) and its model to the served catalog (404); authentication
(401/403) with the scopes the requested model needs; rate limits per tenant or subject (429 +
``Retry-After``), the tokens-per-minute budget charged the request's worst case before the call and
settled to its real usage after, whatever the outcome; metering per tenant of requests and of the
tokens the inference layer reports through the :class:`RequestContext` in
``scope["state"]["observatory"]``. Responses are passed through message by message, so streaming
stays streaming.

The body is read, validated and checked against the catalog before authentication, because the
scopes required depend on the model named in it: nothing reads a field of a body that was not
validated, and a model outside the catalog never reaches a scope lookup or a backend. The read is
bounded by ``max_request_bytes`` either way.

With a :class:`~serving_hooks.budgets.Metering` (tenants, prices, budgets; issue 17), after
authentication the tenant is held to its entry in the tenants table (403 ``unknown_tenant`` or
``model_not_allowed``; the IdP's scopes were checked first, so the table only narrows them), to its own
RPM/TPM (its limiter replaces the global one), and the request's worst case, priced, is reserved against
its budget after the rate limits admitted it (429 ``insufficient_quota``), then settled to the real
cost with the tokens, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpt_observatory.generation import MAX_TOKENS_LIMIT
from gpt_observatory.serving_hooks import _errors
from gpt_observatory.serving_hooks._errors import ApiError
from gpt_observatory.serving_hooks._openai import REQUEST_MODELS, OpenAIRequest, validate
from gpt_observatory.serving_hooks.context import STATE_KEY, RequestContext, prompt_bytes, request_context
from gpt_observatory.serving_hooks.ratelimit import RateLimiter, Refusal, Reservation
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.summed import SummedCounter

if TYPE_CHECKING:
    from gpt_observatory.serving_hooks.budgets import Hold, Metering

__all__ = [
    "Authenticate", "Bounds", "GatewayConfig", "GatewayMiddleware", "RequestContext", "hold", "no_scopes",
    "request_context",
]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_INPUT, _OUTPUT = names.GEN_AI_TOKEN_TYPE_INPUT, names.GEN_AI_TOKEN_TYPE_OUTPUT


class Authenticate(Protocol):
    """What the gateway needs of :class:`serving_hooks.auth.Authenticator`."""

    async def authenticate(
        self, authorization: str | None, required_scopes: Iterable[str] = (), client: str | None = None
    ) -> Any: ...


def no_scopes(model: str | None) -> tuple[str, ...]:
    """Scopes needed when no authenticator says otherwise: none."""
    return ()


@dataclass(frozen=True, slots=True)
class Bounds:
    """What one request for a model is held to (a 400 past one names the setting to raise)."""

    max_n: int = 8
    max_best_of: int = 8
    max_tokens_limit: int = MAX_TOKENS_LIMIT
    context_tokens: int | None = None
    # New tokens per completion a request that names no max_tokens may use, for its worst case;
    # None: max_tokens_limit (what an upstream may generate). The in-process model's is DEFAULT_MAX_TOKENS.
    default_max_tokens: int | None = None
    n_setting: str = "OBSERVATORY_SERVE_MAX_N"
    max_tokens_setting: str = "OBSERVATORY_SERVE_MAX_TOKENS_LIMIT"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """How the gateway treats requests; built once by the app."""

    max_request_bytes: int = 1 << 20
    excluded_paths: frozenset[str] = frozenset({"/healthz", "/readyz", "/metrics"})
    protected_prefix: str = "/v1/"  # paths that need a credential
    routes: frozenset[str] = frozenset()  # static route templates, to name spans before routing
    rate_limit_by: str = "tenant"  # "tenant" | "subject"
    scopes_for: Callable[[str | None], Iterable[str]] = no_scopes
    estimate_tokens: Callable[[Mapping[str, Any]], int] = prompt_bytes
    anonymous_tenant: str = "anonymous"
    # Bounds a single request is held to (ServeSettings max_n, max_best_of, max_tokens_limit, context_tokens).
    max_n: int = 8
    max_best_of: int = 8
    max_tokens_limit: int = MAX_TOKENS_LIMIT
    context_tokens: int | None = None
    # The served catalog: model names callers may use (empty: any); a live catalog changes on reload.
    models: Collection[str] = frozenset()
    default_max_tokens: int | None = None  # see Bounds
    # Per-model bounds (the catalog's); None, or None for a model: the bounds above.
    bounds_for: Callable[[str], Bounds | None] | None = None


class GatewayMiddleware:
    """Pure ASGI middleware; see the module docstring for what it does per request."""

    def __init__(
        self,
        app: ASGIApp,
        config: GatewayConfig | None = None,
        *,
        authenticator: Authenticate | None = None,
        limiter: RateLimiter | None = None,
        metering: Metering | None = None,
    ) -> None:
        self.app = app
        self.metering = metering
        self.config = config or GatewayConfig()
        self.authenticator = authenticator
        self.limiter = limiter if limiter is not None and limiter.enabled else None
        self._auth_error: type[Exception] = _NeverRaised
        if authenticator is not None:
            from gpt_observatory.serving_hooks.auth import AuthError

            self._auth_error = AuthError
        c = self.config
        self._bounds = Bounds(c.max_n, c.max_best_of, c.max_tokens_limit, c.context_tokens, c.default_max_tokens)
        self._tracer = trace.get_tracer(__name__)
        meter = metrics.get_meter(__name__)
        m = names.HTTP_SERVER_REQUEST_DURATION
        self._duration = meter.create_histogram(
            m.name, m.unit, m.description, explicit_bucket_boundaries_advisory=names.HTTP_DURATION_BUCKETS
        )
        # Counters on the request path are summed in process (telemetry.summed): ~10x cheaper per add.
        self._active = SummedCounter.of(__name__, names.HTTP_SERVER_ACTIVE_REQUESTS, up_down=True)
        self._requests = SummedCounter.of(__name__, names.GATEWAY_REQUESTS)
        self._tokens = SummedCounter.of(__name__, names.GATEWAY_TOKENS)
        self._rejections = SummedCounter.of(__name__, names.GATEWAY_REJECTIONS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.config.excluded_paths:
            if scope["type"] == "lifespan" and self.metering is not None:
                receive = _with_lifespan(receive, self.metering)
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        original: str = scope["method"]
        # A label value from a closed set: any other method is "_OTHER" (the span keeps the original).
        method = original if original in names.HTTP_METHODS else names.HTTP_METHOD_OTHER
        path: str = scope["path"]
        headers, repeated = _headers(scope["headers"])
        route = path if path in self.config.routes else None
        parent = propagate.extract(headers)
        shown = "HTTP" if method == names.HTTP_METHOD_OTHER else method
        span = self._tracer.start_span(f"{shown} {route}" if route else shown, parent, SpanKind.SERVER)
        if method != original:
            span.set_attribute(names.HTTP_REQUEST_METHOD_ORIGINAL, original[:32])
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        scheme = scope.get("scheme", "http")
        active_attrs = {names.HTTP_REQUEST_METHOD: method, names.URL_SCHEME: scheme}
        self._active.add(1, active_attrs)
        ctx = RequestContext(tenant=self.config.anonymous_tenant)
        scope.setdefault("state", {})[STATE_KEY] = ctx
        status = 500
        reservation: Reservation | None = None
        held = _Held()
        error: BaseException | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            try:
                if repeated:
                    raise _errors.duplicate_header(repeated)
                receive, reservation = await self._admit(scope, receive, headers, method, path, ctx, held)
            except ApiError as rejection:
                ctx.rejection = rejection.reason
                status = rejection.status
                await rejection.send(send)
            except ClientGone:
                status = 499  # nobody to answer; counted, not an error of ours
            else:
                await self.app(scope, receive, send_wrapper)
        except BaseException as e:
            error = e
            raise
        finally:
            if not ctx.input_tokens and (status == 200 or ctx.output_tokens or ctx.error_type is not None):
                ctx.input_tokens = ctx.prompt_estimate  # the model had the prompt; no usage came back (cut, gone)
            try:
                limiter = held.limiter or self.limiter
                if reservation is not None and limiter is not None:  # every outcome: error, cut, gone
                    await limiter.settle(reservation, ctx.input_tokens + ctx.output_tokens)
                if held.budget is not None and self.metering is not None:
                    cost = await self.metering.settle(  # cached tokens and GPU time where a layer below reports them
                        held.budget, ctx.input_tokens, ctx.output_tokens, getattr(ctx, "cached_tokens", None) or 0,
                        getattr(ctx, "gpu_seconds", None))
                    if held.budget.price is not None:
                        _record(ctx, cost_micro=cost)
            finally:
                self._finish(scope, span, method, route, scheme, status, ctx, error, start)
                self._active.add(-1, active_attrs)
                otel_context.detach(token)

    async def _admit(
        self, scope: Scope, receive: Receive, headers: dict[str, str], method: str, path: str, ctx: RequestContext,
        held: _Held,
    ) -> tuple[Receive, Reservation | None]:
        """Size, JSON, validation, bounds, catalog, auth, tenant, rate-limit and budget checks; returns the
        receive to hand on and the token reservation to settle (the budget's goes in ``held``)."""
        if not path.startswith(self.config.protected_prefix):
            return receive, None
        model = None
        worst = 0
        if method in _BODY_METHODS:
            ctx.body = await self._read_body(receive, headers)
            ctx.json = parse_object(ctx.body)
            receive = _replay(ctx.body, receive)
            request_model = REQUEST_MODELS.get(path)
            if request_model is not None:
                ctx.request = request = validate(request_model, ctx.json)
                model = request.model
                if self.config.models and model not in self.config.models:
                    raise _errors.model_not_found(model)
                worst = self._worst_case(request, ctx)
            else:  # not an OpenAI request: only a string model is read (for scopes), and held to the catalog
                named = ctx.json.get("model")
                model = named if isinstance(named, str) else None
                if model is not None and self.config.models and model not in self.config.models:
                    raise _errors.model_not_found(model)
        if self.authenticator is not None:
            try:
                client = scope.get("client")
                ctx.principal = await self.authenticator.authenticate(
                    headers.get("authorization"), self.config.scopes_for(model), client[0] if client else None
                )
            except self._auth_error as e:
                refusal: Any = e  # serving_hooks.auth.AuthError
                if refusal.status == 429:
                    raise _errors.auth_throttled(refusal.retry_after or 1) from None
                raise _errors.unauthenticated(
                    refusal.status, refusal.reason, refusal.detail, refusal.www_authenticate
                ) from None
            ctx.tenant = ctx.principal.tenant
        limiter = self.limiter
        tenant = None
        if self.metering is not None:
            tenant = self._tenant(ctx.tenant, model)
            held.limiter = limiter = self.metering.limiter(tenant) or limiter
        if limiter is None:
            if tenant is not None:
                held.budget = await self._reserve_budget(tenant, model, worst, ctx)
            return receive, None
        if ctx.principal is None:
            key = ctx.tenant
        else:
            key = ctx.principal.tenant if self.config.rate_limit_by == "tenant" else ctx.principal.subject_hash
        if ctx.request is None and ctx.json:  # another body: its prompt is all it declares
            worst = self.config.estimate_tokens(ctx.json)
        verdict = await limiter.admit(key, worst)
        if isinstance(verdict, Refusal):
            ctx.rate_limit_kind = verdict.kind
            if verdict.budget is not None:
                raise _errors.over_budget(worst, verdict.budget)
            raise _errors.rate_limited(verdict.kind, verdict.retry_after)
        if tenant is not None:
            try:
                held.budget = await self._reserve_budget(tenant, model, worst, ctx)
            except BaseException:
                await limiter.settle(verdict, 0)  # refused: the tokens held for it go back
                raise
        return receive, verdict

    def _tenant(self, name: str, model: str | None) -> Any:
        """The tenant's policy from the tenants table; 403 for a tenant it refuses or a model it does not allow."""
        assert self.metering is not None
        tenant = self.metering.tenant(name)
        if tenant is None:
            raise _errors.ApiError(
                403, f"forbidden: tenant {name!r} is not in this gateway's tenants table; ask its operator to add it",
                "permission_error", "unknown_tenant", "forbidden",
            )
        if model is not None and not tenant.may_call_entry(self._names_of(model)):
            raise _errors.ApiError(
                403, f"forbidden: tenant {name!r} may not call model {model!r} (the models of its entry in the "
                     "tenants table); ask its operator to allow it",
                "permission_error", "model_not_allowed", "forbidden",
            )
        return tenant

    def _names_of(self, model: str) -> tuple[str, ...]:
        """The catalog entry's public name and aliases that ``model`` resolves to (the name alone without one)."""
        catalog = getattr(self.config.models, "catalog", None)  # a live CatalogRouter
        entry = catalog.get(model) if catalog is not None else None
        return tuple(entry.names) if entry is not None else (model,)

    async def _reserve_budget(self, tenant: Any, model: str | None, worst: int, ctx: RequestContext) -> Hold | None:
        """Reserve the request's worst case (prompt estimate in, the rest out) against the tenant's budget."""
        assert self.metering is not None
        if ctx.request is None:
            return None  # not a completion: nothing is generated, nothing priced
        prompt = min(ctx.prompt_estimate, worst)
        priced = self._names_of(model)[0] if model is not None else None  # prices are by public name
        hold = await self.metering.reserve(tenant, priced, prompt, worst - prompt)
        if hold.price is not None:  # the price used, for the usage ledger (ctx.price, then ctx.cost_micro)
            _record(ctx, price=hold.price)
        return hold

    def _worst_case(self, request: OpenAIRequest, ctx: RequestContext) -> int:
        """The most tokens ``request`` may use (prompt estimate + completions x max_tokens); 400 past a bound."""
        bounds_for = self.config.bounds_for
        bounds = (bounds_for(request.model) if bounds_for is not None else None) or self._bounds
        prompt = self.config.estimate_tokens(ctx.json or {})
        ctx.prompt_estimate = prompt
        hold(request, prompt, bounds)
        declared = request.limit()
        context = bounds.context_tokens
        per_completion = declared or bounds.default_max_tokens or bounds.max_tokens_limit
        if declared is None and context is not None:  # the model stops at its context
            per_completion = min(per_completion, max(1, (context - prompt) // request.completions))
        return prompt + request.completions * per_completion

    async def _read_body(self, receive: Receive, headers: dict[str, str]) -> bytes:
        limit = self.config.max_request_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _errors.too_large(limit)
        return await read_body(receive, limit)

    def _finish(
        self,
        scope: Scope,
        span: trace.Span,
        method: str,
        route: str | None,
        scheme: str,
        status: int,
        ctx: RequestContext,
        error: BaseException | None,
        start: float,
    ) -> None:
        if route is None:
            matched = scope.get("route")
            route = getattr(matched, "path", None) if matched is not None else None
        attrs: dict[str, Any] = {
            names.HTTP_REQUEST_METHOD: method,
            names.URL_SCHEME: scheme,
            names.HTTP_RESPONSE_STATUS_CODE: status,
        }
        if route is not None:
            attrs[names.HTTP_ROUTE] = route
        if status >= 500:
            attrs[names.ERROR_TYPE] = type(error).__qualname__ if error is not None else str(status)
        elif ctx.error_type is not None:  # failed after the status went out (a stream cut)
            attrs[names.ERROR_TYPE] = ctx.error_type
        self._duration.record(time.perf_counter() - start, attrs)
        tenant_attrs = {names.TENANT: ctx.tenant, names.HTTP_RESPONSE_STATUS_CODE: status}
        if ctx.error_type is not None:
            tenant_attrs[names.ERROR_TYPE] = attrs[names.ERROR_TYPE]
        self._requests.add(1, tenant_attrs)
        if ctx.rejection is not None:
            rejected = {names.REJECTION_REASON: ctx.rejection, names.TENANT: ctx.tenant}
            if ctx.rate_limit_kind is not None:
                rejected[names.RATE_LIMIT_KIND] = ctx.rate_limit_kind
            self._rejections.add(1, rejected)
        if ctx.input_tokens:
            self._tokens.add(ctx.input_tokens, {names.TENANT: ctx.tenant, names.GEN_AI_TOKEN_TYPE: _INPUT})
        if ctx.output_tokens:
            self._tokens.add(ctx.output_tokens, {names.TENANT: ctx.tenant, names.GEN_AI_TOKEN_TYPE: _OUTPUT})
        if span.is_recording():
            if route is not None:
                span.update_name(f"{'HTTP' if method == names.HTTP_METHOD_OTHER else method} {route}")
            # A new dict: the metrics SDK may keep the one recorded above as a data point's attributes.
            span_attrs = {**attrs, names.URL_PATH: scope["path"], names.TENANT: ctx.tenant}
            if ctx.model is not None:  # the in-process model that answered (canary: which side)
                span_attrs[names.MODEL_VERSION] = ctx.model.version or ""
                span_attrs[names.MODEL_ROLE] = ctx.model.role or ""
            if ctx.rejection is not None:
                span_attrs[names.REJECTION_REASON] = ctx.rejection
                if ctx.rate_limit_kind is not None:
                    span_attrs[names.RATE_LIMIT_KIND] = ctx.rate_limit_kind
            span.set_attributes(span_attrs)
            if error is not None:
                span.record_exception(error)
            if names.ERROR_TYPE in attrs:
                span.set_status(Status(StatusCode.ERROR, attrs[names.ERROR_TYPE]))
        span.end()


_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
_SINGLE = frozenset({b"authorization", b"content-length", b"content-type"})  # a repeat is ambiguous: refused


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> tuple[dict[str, str], str | None]:
    """The request headers by lower-case name, and the first single-valued header sent twice (or None)."""
    headers: dict[str, str] = {}
    repeated = None
    for k, v in raw:
        name = k.decode("latin-1")
        if name in headers and repeated is None and k in _SINGLE:
            repeated = name
        headers[name] = v.decode("latin-1")
    return headers, repeated


def hold(request: OpenAIRequest, prompt: int, bounds: Bounds) -> None:
    """Raise the 400 (naming the setting) for the first of ``bounds`` that ``request`` goes past,
    ``prompt`` being its prompt's estimated tokens."""
    if request.n is not None and request.n > bounds.max_n:
        raise _errors.above_bound("n", bounds.max_n, bounds.n_setting)
    if request.best_of is not None and request.best_of > bounds.max_best_of:
        raise _errors.above_bound("best_of", bounds.max_best_of, "OBSERVATORY_SERVE_MAX_BEST_OF")
    for field in _TOKEN_FIELDS:
        value = getattr(request, field, None)
        if value is not None and value > bounds.max_tokens_limit:
            raise _errors.above_bound(field, bounds.max_tokens_limit, bounds.max_tokens_setting)
    declared = request.limit()
    context = bounds.context_tokens
    if context is not None and prompt + request.completions * (declared or 0) > context:
        raise _errors.over_context(prompt, request.completions, declared, context)


@dataclass(slots=True)
class _Held:
    """What an admitted request holds besides its token reservation: the tenant's own limiter (None: the
    gateway's) and its budget reservation."""

    limiter: RateLimiter | None = None
    budget: Hold | None = None


def _record(ctx: RequestContext, **fields: Any) -> None:
    """Set the pricing fields the usage ledger reads on ``ctx``, where the context has them."""
    for name, value in fields.items():
        with contextlib.suppress(AttributeError):  # a RequestContext without pricing fields (slots)
            setattr(ctx, name, value)


def _with_lifespan(receive: Receive, metering: Metering) -> Receive:
    """A lifespan receive that starts ``metering`` (its reloads) at startup and closes it at shutdown."""

    async def wrapped() -> Message:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await metering.start()
        elif message["type"] == "lifespan.shutdown":
            await metering.close()
        return message

    return wrapped


class ClientGone(Exception):
    """The client disconnected while sending its request body."""


async def read_body(receive: Receive, limit: int | None = None) -> bytes:
    """The whole request body; 413 past ``limit`` bytes, :class:`ClientGone` on a disconnect."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise _errors.too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _NeverRaised(Exception):
    """Placeholder for the auth error type when no authenticator is configured."""


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 (OpenAI-style) when it is not one."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise _errors.bad_json(str(e).split(":", 1)[0]) from None
    if not isinstance(value, dict):
        raise _errors.bad_json(f"expected an object, got {type(value).__name__}")
    return value


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the already-read body on once, then defers to the real one (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
