"""The ``observatory`` command line."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="observatory",
    help="Observability and MLOps for serving a GPT-style model: telemetry, gateway, flows, dashboards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def demo(
    json_out: str = typer.Option(None, "--json", help="Also write the summary as JSON to this path."),
    keep_serving: bool = typer.Option(False, "--keep-serving", help="Leave the gateway up after the summary."),
) -> None:
    """Run the end-to-end demo on embedded defaults (no server to start by hand)."""
    from gpt_observatory.demo.loop import run

    run(json_out=json_out, keep_serving=keep_serving)


def _register() -> None:
    from gpt_observatory.commands import SUBCOMMANDS

    for name, sub in SUBCOMMANDS():
        app.add_typer(sub, name=name)


def main() -> None:
    _register()
    app()
