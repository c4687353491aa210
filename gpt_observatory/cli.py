"""The ``observatory`` command line: one module a subcommand under ``gpt_observatory.commands``."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="observatory",
    help="Observability and MLOps for serving a GPT-style model: telemetry, gateway, flows, dashboards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from gpt_observatory.commands import SUBCOMMANDS

    for name, sub in SUBCOMMANDS():
        app.add_typer(sub, name=name)


def main() -> None:
    from gpt_observatory.extras import MissingExtra, missing_extra

    _register()
    try:
        app()
    except MissingExtra as e:
        print(f"observatory: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except ModuleNotFoundError as e:
        if (hint := missing_extra(e)) is None:
            raise
        print(f"observatory: {hint}", file=sys.stderr)
        raise SystemExit(1) from None
