"""``observatory serve``: run the reference gateway (OpenAI-compatible API with every hook on).

Each option overrides ``OBSERVATORY_SERVE_<OPTION>`` and ``[serve]`` of ``observatory.toml``;
authentication details beyond these options are ``OBSERVATORY_AUTH_*`` (see ``serving_hooks.auth``).
SIGTERM or Ctrl-C stops accepting connections, lets requests in flight finish (up to
``--graceful-timeout``), closes the model backend and flushes telemetry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Run the reference gateway: OpenAI-compatible API, auth, rate limits, metering and GenAI telemetry.",
    invoke_without_command=True,
)


@app.callback(invoke_without_command=True)
def serve(
    backend: Annotated[
        str | None,
        typer.Option(help="Model backend: 'mlflow' (serve models:/MODEL@champion in process) or 'upstream' "
                          "(proxy an OpenAI-compatible server). Default: mlflow."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Registered MLflow model to serve (mlflow backend). Default: tiny-gpt.")
    ] = None,
    alias: Annotated[str | None, typer.Option(help="Registry alias to serve and follow. Default: champion.")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking/registry URI. Default: MLFLOW_TRACKING_URI or MLflow's default.")
    ] = None,
    poll_interval: Annotated[
        float | None,
        typer.Option(help="Seconds between checks of the alias for a new version (hot-swap). Default: 10."),
    ] = None,
    generation_threads: Annotated[
        int | None, typer.Option(help="Threads running in-process generation (mlflow backend). Default: 8.")
    ] = None,
    canary_share: Annotated[
        float | None,
        typer.Option(help="Share of requests (0..1) served by the 'challenger' alias while it exists (mlflow "
                          "backend); deleting the alias sets it back to 0 at the next poll. Default: 0."),
    ] = None,
    canary_tenant: Annotated[
        list[str] | None,
        typer.Option(metavar="TENANT", help="A tenant always served by the challenger while it exists (repeatable).")
    ] = None,
    canary_sticky: Annotated[
        str | None,
        typer.Option(help="Keep callers on one side of the canary: 'none' (draw per request), 'tenant', or "
                          "'session' (the OpenAI 'user' field). Default: none."),
    ] = None,
    challenger_alias: Annotated[
        str | None, typer.Option(help="Registry alias of the canary's challenger. Default: challenger.")
    ] = None,
    upstream_url: Annotated[
        str | None,
        typer.Option(help="OpenAI base URL of the upstream server, e.g. http://127.0.0.1:8001/v1 (upstream backend)."),
    ] = None,
    upstream_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds to wait for the upstream's answer or its next streamed bytes before a 504. "
                          "Default: 60."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on. Default: 127.0.0.1.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on. Default: 8000.")] = None,
    oidc_issuer: Annotated[
        str | None, typer.Option(help="OIDC issuer URL whose JWKS verify bearer JWTs (discovery at "
                                      "/.well-known/openid-configuration).")
    ] = None,
    audience: Annotated[str | None, typer.Option(help="Required 'aud' of JWTs (with --oidc-issuer).")] = None,
    api_keys_file: Annotated[
        Path | None, typer.Option(help="JSON file of hashed API keys (made by 'observatory keys create').")
    ] = None,
    allow_anonymous: Annotated[
        bool, typer.Option(help="Serve without authentication when none is configured (development only).")
    ] = False,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Redis URL holding rate-limit state shared by gateway replicas, e.g. "
                          "redis://127.0.0.1:6379/0. Default: in memory (per process)."),
    ] = None,
    requests_per_minute: Annotated[
        int | None,
        typer.Option("--rpm", help="Requests per minute allowed per tenant (or subject). Default: unlimited."),
    ] = None,
    tokens_per_minute: Annotated[
        int | None,
        typer.Option("--tpm", help="Tokens (input + output) per minute allowed per tenant (or subject). "
                                   "Default: unlimited."),
    ] = None,
    rate_limit_by: Annotated[
        str | None, typer.Option(help="Key rate limits by 'tenant' or by 'subject' (one API key or JWT subject).")
    ] = None,
    max_request_bytes: Annotated[
        int | None, typer.Option(help="Largest request body accepted; larger ones get 413. Default: 1 MiB.")
    ] = None,
    capture_content: Annotated[
        bool | None,
        typer.Option("--capture-content/--no-capture-content",
                     help="Record prompt and completion text on GenAI spans. Default: the telemetry setting (off)."),
    ] = None,
    metrics_endpoint: Annotated[
        bool, typer.Option(help="Serve Prometheus metrics on this app's /metrics (adds the prometheus backend).")
    ] = True,
    graceful_timeout: Annotated[
        float | None, typer.Option(help="Seconds requests in flight may take to finish on shutdown. Default: 30.")
    ] = None,
    service_name: Annotated[
        str, typer.Option(help="service.name of this process's telemetry (OTEL_SERVICE_NAME wins when set).")
    ] = "observatory-gateway",
) -> None:
    """Serve the OpenAI-compatible API until SIGTERM/Ctrl-C."""
    import gc
    import os
    import signal

    import uvicorn

    from gpt_observatory import telemetry
    from gpt_observatory.serving_hooks.app import create_app
    from gpt_observatory.serving_hooks.settings import load
    from gpt_observatory.telemetry.settings import ConfigError

    try:
        settings = load(
            backend=backend, model=model, alias=alias, tracking_uri=tracking_uri, poll_interval_s=poll_interval,
            workers=generation_threads, canary_share=canary_share, canary_tenants=canary_tenant or None,
            canary_sticky=canary_sticky, challenger_alias=challenger_alias, upstream_url=upstream_url,
            upstream_timeout_s=upstream_timeout, host=host,
            port=port, oidc_issuer=oidc_issuer, audience=audience, api_keys_file=api_keys_file,
            allow_anonymous=allow_anonymous or None, redis_url=redis_url, requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute, rate_limit_by=rate_limit_by, max_request_bytes=max_request_bytes,
            capture_content=capture_content, graceful_timeout_s=graceful_timeout,
        )
        overrides: dict = {}
        if metrics_endpoint:
            chosen = telemetry.settings.load().exporters("metrics")
            overrides = {"metrics_exporter": [*chosen, "prometheus"] if "prometheus" not in chosen else chosen,
                         "prometheus_serve": False}
        handle = telemetry.configure(None if os.environ.get("OTEL_SERVICE_NAME") else service_name, **overrides)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        try:
            asgi = create_app(settings)
        except ConfigError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
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
        try:
            uvicorn.Server(config).run()
        except _Stop:
            pass
    finally:
        handle.shutdown()


class _Stop(Exception):
    """Raised by the re-raised shutdown signal once uvicorn has finished."""


def _stopped(signum: int, frame: object) -> None:
    raise _Stop


if __name__ == "__main__":
    app()
