"""``observatory serve``: run the reference gateway (OpenAI-compatible API with every hook on).

The options are the fields of :class:`~gpt_observatory.serving_hooks.settings.ServeSettings`,
built from the model: ``--upstream-url`` sets ``upstream_url``, with the field's type, choices and
description, so a new setting is a new option. An option given overrides
``OBSERVATORY_SERVE_<FIELD>`` and ``[serve]`` of ``observatory.toml``, which override the defaults.
Secrets (``upstream_api_key``) are no options: a command line is visible to every user of the
machine. Authentication details beyond these options are ``OBSERVATORY_AUTH_*`` (see
``serving_hooks.auth``). SIGTERM or Ctrl-C stops accepting connections, lets requests in flight
finish, closes the model backend and flushes telemetry, all within ``--graceful-timeout-s`` of the
signal (an exporter that does not answer is left behind).

With ``--admin-port`` the admin endpoints (``/metrics``, the docs) get a listener of their own, on
the same host, in the same process: one uvicorn server with two sockets, each connection handed to
the app of the socket it arrived on. One server rather than two on one loop because uvicorn's
signal handling is per server and process-wide (a second server would replace the first's handler,
and they would shut down one after the other): one server stops both listeners on one signal,
within one graceful timeout, and runs the API's lifespan once.

With ``--workers N`` (N > 1) this process is a supervisor (:mod:`serving_hooks.workers`): it binds
the API and admin sockets once and runs N spawned worker processes on them, each the gateway above
with telemetry of its own (``service.instance.id`` ``<host>-<supervisor pid>-<index>``), rate limits
in Redis or in the supervisor's host store (:mod:`serving_hooks._hoststore`), and ``/metrics``
answering for every worker (:mod:`serving_hooks._worker_metrics`). SIGTERM to the supervisor drains
every worker.
"""

from __future__ import annotations

import inspect
import socket
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, get_args, get_origin

import typer
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from starlette.types import ASGIApp, Receive, Scope, Send

from gpt_observatory.serving_hooks.settings import ServeSettings

if TYPE_CHECKING:
    from gpt_observatory.serving_hooks.workers import Worker

# The spellings these options had before they were named after their settings; still accepted.
ALIASES: dict[str, tuple[str, ...]] = {
    "poll_interval_s": ("--poll-interval",),
    "canary_tenants": ("--canary-tenant",),
    "upstream_timeout_s": ("--upstream-timeout",),
    "graceful_timeout_s": ("--graceful-timeout",),
    "requests_per_minute": ("--rpm",),
    "tokens_per_minute": ("--tpm",),
}

app = typer.Typer(
    help="Run the reference gateway: OpenAI-compatible API, auth, rate limits, metering and GenAI telemetry.",
    invoke_without_command=True,
)


def setting_options(
    settings: type[BaseModel], aliases: Mapping[str, tuple[str, ...]] | None = None
) -> list[inspect.Parameter]:
    """One keyword parameter with a typer option per field of ``settings`` (secrets left out), each
    defaulting to ``None``: "not given", so the environment, the config file or the default decides."""
    aliases = aliases or {}
    options = (_option(name, field, aliases.get(name, ())) for name, field in settings.model_fields.items())
    return [option for option in options if option is not None]


def _option(name: str, field: FieldInfo, aliases: tuple[str, ...]) -> inspect.Parameter | None:
    kind = _without_none(field.annotation)
    if kind is SecretStr:
        return None
    flag = "--" + name.replace("_", "-")
    help_text = field.description or ""
    metavar = None
    if get_origin(kind) is list:
        help_text += " Repeatable."
        metavar = f"<{get_args(kind)[0].__name__}>"
    default = field.get_default(call_default_factory=True)
    if default is not None and default != []:
        shown = ("on" if default else "off") if kind is bool else f"{default:g}" if kind is float else default
        help_text += f" Default: {shown}."
    decls = (f"{flag}/--no-{flag[2:]}",) if kind is bool else (flag, *aliases)
    option = typer.Option(*decls, help=help_text.strip(), show_default=False, metavar=metavar)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
    )


def _without_none(annotation: Any) -> Any:
    """``X | None`` -> ``X``; anything else as it is."""
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    return args[0] if len(args) == 1 and type(None) in get_args(annotation) else annotation


def _given(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options given on the command line (typer hands an empty list for a repeatable one not given)."""
    return {k: v for k, v in options.items() if v is not None and not (isinstance(v, list | tuple) and not v)}


def with_options(fn: Callable[..., Any], options: list[inspect.Parameter]) -> Callable[..., Any]:
    """``fn`` (taking ``**options``) as typer sees it: ``options`` first, then its own parameters."""
    signature = inspect.signature(fn, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    fn.__signature__ = signature.replace(parameters=[*options, *own])  # type: ignore[attr-defined]
    return fn


def serve(
    *,
    metrics_endpoint: Annotated[
        bool, typer.Option(help="Serve Prometheus metrics on this app's /metrics (adds the prometheus backend).")
    ] = True,
    service_name: Annotated[
        str, typer.Option(help="service.name of this process's telemetry (OTEL_SERVICE_NAME wins when set).")
    ] = "observatory-gateway",
    **options: Any,
) -> None:
    """Serve the OpenAI-compatible API until SIGTERM/Ctrl-C."""
    from gpt_observatory import telemetry
    from gpt_observatory.serving_hooks.settings import load
    from gpt_observatory.telemetry.settings import ConfigError

    try:
        settings = load(**_given(options))
        if settings.admin_port is not None and settings.admin_port == settings.port != 0:
            raise ConfigError(f"admin_port ({settings.admin_port}) must differ from port "
                              "(OBSERVATORY_SERVE_ADMIN_PORT, --admin-port)")
        if settings.workers > 1:
            telemetry.settings.load()  # a bad telemetry setting is refused here, not in each worker
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if settings.workers > 1:
        raise typer.Exit(_supervise(settings, metrics_endpoint, service_name))
    _run(settings, metrics_endpoint, service_name)


def _run(
    settings: ServeSettings, metrics_endpoint: bool, service_name: str, worker: Worker | None = None,
    sockets: list[socket.socket] | None = None, started: Any = None,
) -> None:
    """Serve in this process: the one gateway process, or worker ``worker`` on the supervisor's ``sockets``
    (setting ``started`` once it serves)."""
    import gc
    import signal

    import uvicorn

    from gpt_observatory.serving_hooks.app import create_listeners
    from gpt_observatory.serving_hooks.budgets import metering_for
    from gpt_observatory.serving_hooks.ratelimit import limiter_for
    from gpt_observatory.telemetry.settings import ConfigError

    try:
        handle = _telemetry(metrics_endpoint, service_name, worker)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    server: Any = None
    try:
        try:
            limiter = limiter_for(settings, worker.store_socket if worker is not None else None)
            store = worker.store_socket if worker is not None else None
            listeners = create_listeners(settings, limiter=limiter, metering=metering_for(settings, store))
        except ConfigError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        asgi = listeners.api
        if listeners.admin is not None:
            if sockets is None:
                sockets = [_bind(settings.host, settings.port), _bind(settings.host, settings.admin_port or 0)]
            asgi = ByListener(listeners.api, listeners.admin, sockets[1].getsockname()[1])
        config = uvicorn.Config(
            asgi, host=settings.host, port=settings.port, access_log=False, log_config=None,
            timeout_graceful_shutdown=settings.graceful_timeout_s, lifespan="on",
        )
        # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler
        # that was there before it: make that one a clean exit, so telemetry is flushed below.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _stopped)
        # What is alive now (imported modules, the app, the telemetry pipeline) lives as long as the
        # process: move it out of the cyclic collector's sight, so the full collections that the
        # request path's short-lived objects trigger do not walk it again each time (bench/README).
        gc.collect()
        gc.freeze()
        server = _server(config, worker, started)
        try:
            server.run(sockets=sockets)
        except _Stop:
            pass
    finally:
        handle.shutdown(_flush_budget(settings.graceful_timeout_s, getattr(server, "stopping_since", None)))


def _telemetry(metrics_endpoint: bool, service_name: str, worker: Worker | None) -> Any:
    """Configure this process's telemetry; a worker's resource gets a ``service.instance.id`` of its own."""
    import os

    from opentelemetry.semconv.attributes.service_attributes import SERVICE_INSTANCE_ID

    from gpt_observatory import telemetry

    overrides: dict = {}
    if metrics_endpoint:
        chosen = telemetry.settings.load().exporters("metrics")
        overrides = {"metrics_exporter": [*chosen, "prometheus"] if "prometheus" not in chosen else chosen,
                     "prometheus_serve": False}
    if worker is not None:
        attributes = telemetry.settings.load().resource_attributes
        base = attributes.get(SERVICE_INSTANCE_ID) or f"{socket.gethostname()}-{os.getppid()}"
        overrides["resource_attributes"] = {**attributes, SERVICE_INSTANCE_ID: f"{base}-{worker.index}"}
    return telemetry.configure(None if os.environ.get("OTEL_SERVICE_NAME") else service_name, **overrides)


def _supervise(settings: ServeSettings, metrics_endpoint: bool, service_name: str) -> int:
    """Bind the listeners once and run ``settings.workers`` workers on them (serving_hooks.workers)."""
    from gpt_observatory.serving_hooks.workers import Supervisor

    sockets = [_bind(settings.host, settings.port)]
    if settings.admin_port is not None:
        sockets.append(_bind(settings.host, settings.admin_port))
    supervisor = Supervisor(
        _worker, (settings, metrics_endpoint, service_name), settings.workers, sockets,
        graceful_timeout_s=settings.graceful_timeout_s, host_store=settings.limiter_store == "host",
    )
    return supervisor.run()


def _worker(worker: Worker, sockets: list[socket.socket], started: Any, settings: ServeSettings,
            metrics_endpoint: bool, service_name: str) -> None:
    """One worker process of ``serve --workers N`` (spawned by the supervisor); exits with ``serve``'s code."""
    import sys

    from gpt_observatory.serving_hooks import _worker_metrics

    _worker_metrics.join(worker.index, worker.metrics_sockets())
    try:
        _run(settings, metrics_endpoint, service_name, worker, sockets, started)
    except typer.Exit as e:
        sys.exit(e.exit_code)


app.callback(invoke_without_command=True)(with_options(serve, setting_options(ServeSettings, ALIASES)))


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound as uvicorn binds its own (it logs the address); the server listens on it."""
    import uvicorn

    return uvicorn.Config(None, host=host, port=port, log_config=None).bind_socket()


class ByListener:
    """Pure ASGI: a connection to the admin socket (local port ``admin_port``) goes to ``admin``,
    every other one, and the lifespan, to ``api``. The local port is the socket's own, not
    anything a caller sends."""

    def __init__(self, api: ASGIApp, admin: ASGIApp, admin_port: int) -> None:
        self.api, self.admin, self.admin_port = api, admin, admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if server is not None and server[1] == self.admin_port and scope["type"] != "lifespan":
            await self.admin(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def _server(config: Any, worker: Worker | None = None, started: Any = None) -> Any:
    """uvicorn's server, noting when the shutdown signal came (``stopping_since``, monotonic); a worker's
    also answers for its own metrics on its socket and sets ``started`` once it serves."""
    import uvicorn

    class Server(uvicorn.Server):
        stopping_since: float | None = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if worker is not None and self.started:
                from gpt_observatory.serving_hooks import _worker_metrics

                self.metrics_server = await _worker_metrics.serve_own(worker.metrics_socket())
                started.set()

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.stopping_since is None:
                self.stopping_since = time.monotonic()
            super().handle_exit(sig, frame)

    return Server(config)


_EXIT_S = 1.0  # the interpreter's own exit after the flush: tearing down torch, MLflow and the rest


def _flush_budget(graceful_timeout_s: float, stopping_since: float | None) -> float | None:
    """Seconds telemetry may take to flush: what draining the requests left of the graceful timeout
    since the signal, less the exit itself (at least one); ``None`` (the telemetry setting) when no
    signal stopped the server."""
    if stopping_since is None:
        return None
    return max(1.0, graceful_timeout_s - (time.monotonic() - stopping_since) - _EXIT_S)


class _Stop(Exception):
    """Raised by the re-raised shutdown signal once uvicorn has finished."""


def _stopped(signum: int, frame: object) -> None:
    raise _Stop


if __name__ == "__main__":
    app()
