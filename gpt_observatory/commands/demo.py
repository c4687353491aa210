"""``observatory demo``: the whole loop on embedded defaults (the demo itself is ``gpt_observatory.demo``)."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False)


@app.callback(invoke_without_command=True)
def demo(
    json_out: str = typer.Option(None, "--json", help="Also write the summary as JSON to this path."),
    keep_serving: bool = typer.Option(False, "--keep-serving", help="Leave the gateway up after the summary."),
) -> None:
    """Run the end-to-end demo on embedded defaults (no server to start by hand)."""
    from gpt_observatory.extras import require

    require("torch", "observatory demo (it trains the reference model)")
    from gpt_observatory.demo.loop import run

    run(json_out=json_out, keep_serving=keep_serving)
