"""Production posture: what the gateway refuses to start with, and who may read its admin endpoints.

With ``environment=production`` (``OBSERVATORY_ENVIRONMENT``, or ``deployment.environment.name`` in
``OTEL_RESOURCE_ATTRIBUTES``), :func:`check` refuses each development default that is still in
place, unless ``production_allow`` names it:

- ``dev_idp``: the OIDC issuer is the development IdP. The rule: an issuer on a loopback host
  (``localhost``, ``127.0.0.0/8``, ``::1``) is taken to be it; ``serving_hooks.idp`` refuses to
  serve anywhere else, and a production IdP is reached by a name other hosts can resolve too.
- ``default_salt``: subject hashes use the published development salt, so anyone reading
  telemetry can test guesses of who a subject is.
- ``anonymous``: no credential is checked (``allow_anonymous`` with no issuer and no key file).
- ``public_admin``: ``/metrics``, ``/docs`` and ``/openapi.json`` answer anyone on the API port
  (no ``admin_port`` and no ``admin_token``).

:func:`admin_app` is the admin listener's app (``/metrics`` and the API's docs), :func:`admin_paths`
the same endpoints where the API serves them itself, and :class:`AdminGuard` the admin token check: pure ASGI, constant-time, a 401 in the OpenAI error
shape; it never logs or shows the token.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection
from urllib.parse import urlsplit

from fastapi import FastAPI
from pydantic import SecretStr
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gpt_observatory.serving_hooks._auth_settings import DEFAULT_SUBJECT_SALT, ENV_PREFIX, AuthSettings
from gpt_observatory.serving_hooks._errors import ApiError
from gpt_observatory.serving_hooks._jwks import is_loopback_host
from gpt_observatory.serving_hooks._worker_metrics import exposition
from gpt_observatory.serving_hooks.settings import ServeSettings
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.settings import ConfigError
from gpt_observatory.telemetry.settings import Settings as TelemetrySettings

PRODUCTION = "production"
ALLOWANCES = ("dev_idp", "default_salt", "anonymous", "public_admin")
_SERVE = "OBSERVATORY_SERVE_"


def environment(telemetry_settings: TelemetrySettings) -> str:
    """The ``deployment.environment.name`` this process reports (resource attributes win, as in the resource)."""
    return telemetry_settings.resource_attributes.get(names.DEPLOYMENT_ENVIRONMENT, telemetry_settings.environment)


def is_dev_idp(issuer: str) -> bool:
    """Whether ``issuer`` is (or could be) the development IdP: it is served on a loopback host."""
    host = urlsplit(issuer).hostname
    return host is not None and is_loopback_host(host)


def check(settings: ServeSettings, auth_settings: AuthSettings, telemetry_settings: TelemetrySettings) -> None:
    """Raise :class:`ConfigError` listing every unsafe default in production not named in ``production_allow``."""
    unknown = sorted(set(settings.production_allow) - set(ALLOWANCES))
    if unknown:
        raise ConfigError(
            f"invalid serve setting 'production_allow' ({_SERVE}PRODUCTION_ALLOW): unknown {', '.join(unknown)}; "
            f"accepted: {', '.join(ALLOWANCES)}"
        )
    if environment(telemetry_settings) != PRODUCTION:
        return
    refusals = [
        f"{problem} (allow it with {_SERVE}PRODUCTION_ALLOW={allowance})"
        for allowance, problem in _unsafe(settings, auth_settings)
        if allowance not in settings.production_allow
    ]
    if refusals:
        raise ConfigError("environment=production refuses to start: " + "; ".join(refusals))


def _unsafe(settings: ServeSettings, auth: AuthSettings) -> list[tuple[str, str]]:
    found = []
    if auth.issuer and is_dev_idp(auth.issuer):
        found.append(("dev_idp", "setting 'oidc_issuer' is the development IdP (a loopback issuer); set "
                                 f"{_SERVE}OIDC_ISSUER (or {ENV_PREFIX}ISSUER) to your identity provider"))
    if auth.subject_salt.get_secret_value() == DEFAULT_SUBJECT_SALT:
        found.append(("default_salt", "setting 'subject_salt' is the published development default; set "
                                      f"{ENV_PREFIX}SUBJECT_SALT to a secret of your own"))
    if settings.allow_anonymous and not (auth.issuer or auth.api_keys_file):
        found.append(("anonymous", "setting 'allow_anonymous' serves every caller unauthenticated; set "
                                   f"{_SERVE}OIDC_ISSUER or {_SERVE}API_KEYS_FILE and unset {_SERVE}ALLOW_ANONYMOUS"))
    if settings.admin_port is None and settings.admin_token is None:
        found.append(("public_admin", "settings 'admin_port' and 'admin_token' are unset, so /metrics and /docs "
                                      f"are public on the API port; set {_SERVE}ADMIN_PORT and/or "
                                      f"{_SERVE}ADMIN_TOKEN"))
    return found


def admin_app(api: FastAPI, telemetry: dict[str, bool], settings: ServeSettings | None = None) -> FastAPI:
    """``/metrics``, ``/admin/usage`` (the usage ledger's totals, as ``observatory usage --format json``)
    and ``api``'s docs (``/docs``, ``/docs/oauth2-redirect``, ``/redoc``, ``/openapi.json``: the API's
    document, not this app's) for the admin listener. ``settings`` name the ledger (unset: loaded)."""
    admin = FastAPI(title=api.title, version=api.version, telemetry=telemetry)
    admin.openapi = api.openapi  # type: ignore[method-assign]  # serve the API's document
    admin.add_api_route("/metrics", metrics, response_class=Response, include_in_schema=False)
    admin.add_api_route("/admin/usage", _usage_endpoint(settings), response_class=Response, include_in_schema=False)
    return admin


def _usage_endpoint(settings: ServeSettings | None):
    async def usage(tenant: str | None = None, model: str | None = None, since: str | None = None,
                    until: str | None = None, by: str = "tenant", include_shadow: bool = False) -> Response:
        """Totals from the usage ledger: ``?tenant=&model=&since=&until=&by=tenant|model|day&include_shadow=``."""
        import asyncio

        import orjson

        from gpt_observatory.serving_hooks.ledger import open_store, store_location
        from gpt_observatory.serving_hooks.ledger._read import BY, Filters, totals, when
        from gpt_observatory.serving_hooks.settings import load

        try:
            if by not in BY:
                raise ValueError(f"'by' must be one of {', '.join(BY)}")
            filters = Filters(tenant, model, when(since), when(until))
        except ValueError as e:
            body = {"error": {"message": f"invalid query: {e}", "type": "invalid_request_error", "code": None}}
            return Response(orjson.dumps(body), 400, media_type="application/json")

        def read() -> list[dict]:
            store = open_store(store_location(settings or load()))
            try:
                return totals(store, by, filters, include_shadow)
            finally:
                store.close()

        rows = await asyncio.to_thread(read)
        return Response(orjson.dumps({"by": by, "rows": rows}), media_type="application/json")

    return usage


def admin_paths(api: FastAPI) -> frozenset[str]:
    """The paths of the admin endpoints ``api`` serves itself (no admin listener)."""
    paths = {"/metrics", api.openapi_url, api.docs_url, api.redoc_url}
    if api.docs_url and api.swagger_ui_oauth2_redirect_url:
        paths.add(api.swagger_ui_oauth2_redirect_url)
    return frozenset(p for p in paths if p)


async def metrics() -> Response:
    """Prometheus exposition of this process's metrics (of every worker's, with ``serve --workers N``)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(await exposition(), media_type=CONTENT_TYPE_LATEST)


class AdminGuard:
    """Pure ASGI: requests to ``paths`` (every request, when ``paths`` is None) need
    ``Authorization: Bearer <token>``; anything else is a 401 and never reaches ``app``."""

    def __init__(self, app: ASGIApp, token: SecretStr, paths: Collection[str] | None = None) -> None:
        secret = token.get_secret_value()
        if not secret:
            raise ConfigError(f"invalid serve setting 'admin_token' ({_SERVE}ADMIN_TOKEN): empty; unset it or "
                              "give a secret")
        self.app = app
        self.paths = frozenset(paths) if paths is not None else None
        self._token = secret.encode()

    def __repr__(self) -> str:
        return f"AdminGuard({self.app!r}, paths={self.paths!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.paths is not None and scope["path"] not in self.paths):
            await self.app(scope, receive, send)
            return
        if self._authorized(scope["headers"]):
            await self.app(scope, receive, send)
            return
        await _REFUSED.send(send)

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        given = [value for name, value in headers if name == b"authorization"]
        if len(given) != 1:
            return False
        scheme, _, credential = given[0].strip().partition(b" ")
        # compare_digest takes as long whatever the first differing byte (only the length shows).
        return scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self._token)


_REFUSED = ApiError(
    401, f"authentication failed: admin_token: the admin endpoints need 'Authorization: Bearer <admin token>' "
         f"(the value of {_SERVE}ADMIN_TOKEN)", "authentication_error", "admin_token", None,
    [(b"www-authenticate", b'Bearer realm="observatory-admin"')],
)
