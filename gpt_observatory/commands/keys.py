"""``observatory keys``: create, list and revoke API keys (the file stores only their hashes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Create, list and revoke API keys for services. Only SHA-256 hashes are stored.",
                  no_args_is_help=True)

FileOption = Annotated[
    Path | None,
    typer.Option(
        "--file", "-f", envvar="OBSERVATORY_AUTH_API_KEYS_FILE",
        help="The API key file (JSON, hashes only) the gateway reads. "
             "Default: OBSERVATORY_AUTH_API_KEYS_FILE, else <state dir>/api-keys.json.",
    ),
]


def _store(path: Path | None):  # -> ApiKeyStore (imported lazily)
    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore
    from gpt_observatory.telemetry.settings import state_dir

    try:
        return ApiKeyStore(path or state_dir() / "api-keys.json")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--file") from None


@app.command()
def create(
    tenant: Annotated[
        str, typer.Option("--tenant", "-t", help="Tenant the key's requests are metered and limited under.")
    ],
    file: FileOption = None,
    scopes: Annotated[
        list[str] | None,
        typer.Option("--scopes", "--scope", "-s", help="Scopes granted to the key; repeat or comma-separate."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A note on who uses the key (shown by `list`).")] = None,
) -> None:
    """Make a new key. It is printed once, as the last line of stdout; only its hash is stored."""
    store = _store(file)
    granted = [s for item in scopes or () for s in item.replace(",", " ").split()]
    try:
        key, record = store.create(tenant, granted, name=name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(
        f"created API key {record.key_id} for tenant {record.tenant!r} "
        f"(scopes: {' '.join(record.scopes) or 'none'}) in {store.path}; it is shown only now",
        err=True,
    )
    typer.echo(key)


@app.command()
def revoke(
    file: FileOption = None,
    key_id: Annotated[str | None, typer.Option("--key-id", help="Id of the key to revoke (see `list`).")] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="The key itself; '-' reads it from stdin (out of shell history).")
    ] = None,
) -> None:
    """Revoke a key by id or by value; running gateways refuse it on their next request."""
    if (key_id is None) == (key is None):
        raise typer.BadParameter("give exactly one of --key-id or --key")
    if key == "-":
        key = sys.stdin.readline().strip()
    store = _store(file)
    try:
        record = store.revoke(key_id, key=key) if key_id else store.revoke(key=key)
    except (KeyError, ValueError) as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked API key {record.key_id} (tenant {record.tenant!r}) at {record.revoked_at}")


@app.command("list")
def list_keys(
    file: FileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (without hashes) instead of a table.")] = False,
) -> None:
    """Show the stored keys (ids, tenants, scopes, state); never hashes or keys."""
    records = _store(file).records()
    rows = [
        {"key_id": r.key_id, "tenant": r.tenant, "scopes": list(r.scopes), "name": r.name,
         "created": r.created, "revoked": r.revoked, "revoked_at": r.revoked_at}
        for r in records
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("key id", "tenant", "scopes", "name", "created", "state")
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked"] else "active"
        table.add_row(row["key_id"], row["tenant"], " ".join(row["scopes"]), row["name"] or "", row["created"], state)
    Console().print(table)
