"""``observatory idp``: the development OpenID provider (loopback only; never for production)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Development OpenID provider for demos and tests: discovery, JWKS and client-credentials tokens "
         "on loopback. Not for production.",
    no_args_is_help=True,
)

StateDirOption = Annotated[
    Path | None,
    typer.Option("--state-dir", help="Where the IdP keeps its signing keys and issuer URL. Default: the state folder."),
]


def _idp_dir(state_dir: Path | None) -> Path:
    from gpt_observatory.telemetry.settings import state_dir as default_state_dir

    return state_dir or default_state_dir()


@app.command()
def serve(
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on (0 picks a free one).")] = 9400,
    host: Annotated[str, typer.Option("--host", help="Loopback address to bind; other addresses are refused.")] = (
        "127.0.0.1"
    ),
    state_dir: StateDirOption = None,
    audience: Annotated[str, typer.Option("--audience", help="`aud` of the tokens it issues.")] = "observatory",
    token_ttl: Annotated[int, typer.Option("--token-ttl", help="Lifetime of issued tokens, seconds.", min=1)] = 300,
    clients: Annotated[
        list[str] | None,
        typer.Option(
            "--client",
            help="A client allowed the client-credentials grant, as ID:SECRET:TENANT[:SCOPE,SCOPE...]; repeatable. "
                 "Without any, one client 'demo-client' of tenant 'demo' with scope 'inference' and a random "
                 "secret (printed) is registered.",
        ),
    ] = None,
) -> None:
    """Serve discovery, JWKS and /token until interrupted."""
    from gpt_observatory.serving_hooks.idp import DevIdP

    try:
        idp = DevIdP(_idp_dir(state_dir), host=host, port=port, audience=audience, token_ttl=token_ttl)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--host") from None
    specs = list(clients or ()) or [f"demo-client:{secrets.token_urlsafe(24)}:demo:inference"]
    for spec in specs:
        parts = spec.split(":")
        if len(parts) not in (3, 4) or not all(parts[:3]):
            raise typer.BadParameter(
                f"expected ID:SECRET:TENANT[:SCOPES], got {len(parts)} fields", param_hint="--client"
            )
        scopes = parts[3].replace(",", " ").split() if len(parts) == 4 else []
        idp.register_client(parts[0], parts[1], parts[2], scopes)
        if not clients:
            typer.echo(f"client id {parts[0]}  secret {parts[1]}  tenant {parts[2]}  scopes {' '.join(scopes)}")
    idp.bind()
    typer.echo(f"development IdP (not for production): issuer {idp.issuer}  signing key {idp.current_kid}")
    idp.serve_forever()


@app.command()
def rotate(
    state_dir: StateDirOption = None,
    grace_s: Annotated[
        float | None,
        typer.Option("--grace", help="Seconds the previous keys stay published; default: until retired by hand."),
    ] = None,
) -> None:
    """Sign with a new key from now on; a running IdP picks it up from the state folder."""
    from gpt_observatory.serving_hooks.idp import DevIdP

    idp = DevIdP(_idp_dir(state_dir))
    idp.load_or_create_keys()
    typer.echo(idp.rotate(grace_s=grace_s))


@app.command()
def token(
    client_id: Annotated[str, typer.Option("--client-id", help="OAuth client id registered with the IdP.")],
    client_secret: Annotated[
        str, typer.Option("--client-secret", envvar="OBSERVATORY_IDP_CLIENT_SECRET", help="The client's secret.")
    ],
    scope: Annotated[str | None, typer.Option("--scope", help="Scopes to ask for (space-separated).")] = None,
    issuer: Annotated[
        str | None, typer.Option("--issuer", help="Issuer URL. Default: the one a local `idp serve` wrote.")
    ] = None,
    state_dir: StateDirOption = None,
) -> None:
    """Get an access token by client credentials; it is printed as the last line of stdout."""
    import httpx

    from gpt_observatory.serving_hooks._jwks import DISCOVERY_PATH

    if issuer is None:
        path = _idp_dir(state_dir) / "idp" / "issuer"
        if not path.exists():
            raise typer.BadParameter(f"no running IdP recorded in {path}; pass --issuer", param_hint="--issuer")
        issuer = path.read_text().strip()
    try:
        discovery = httpx.get(issuer.rstrip("/") + DISCOVERY_PATH, timeout=10).raise_for_status().json()
        endpoint = discovery["token_endpoint"]
        form = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
        response = httpx.post(endpoint, data=form, auth=(client_id, client_secret), timeout=10)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the IdP at {issuer}: {exc}", err=True)
        raise typer.Exit(1) from None
    body = response.json()
    if response.status_code != 200:
        typer.echo(f"error: {body.get('error')}: {body.get('error_description')}", err=True)
        raise typer.Exit(1)
    typer.echo(body["access_token"])
