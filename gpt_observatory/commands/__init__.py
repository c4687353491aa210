"""Subcommand groups, one module per area (each exposes a typer ``app``)."""

from __future__ import annotations

from collections.abc import Iterator

import typer

_GROUPS = ("demo", "gpu", "serve", "keys", "idp", "pipeline", "dashboards", "trace", "logs", "usage")


def SUBCOMMANDS() -> Iterator[tuple[str, typer.Typer]]:
    """(name, typer app) for every area whose command module is present."""
    from importlib import import_module
    from importlib.util import find_spec

    for name in _GROUPS:
        if find_spec(f"gpt_observatory.commands.{name}") is not None:
            yield name, import_module(f"gpt_observatory.commands.{name}").app
