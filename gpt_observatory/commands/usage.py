"""``observatory usage``: totals from the usage ledger (SQLite or PostgreSQL), with cost."""

from __future__ import annotations

import csv
import io
import json
import sys

import typer

app = typer.Typer(help="Totals from the usage ledger: requests, tokens and cost per tenant, model or day.",
                  subcommand_metavar="")

_SHOWN = ("key", "currency", "requests", "input_tokens", "output_tokens", "cached_tokens", "cost",
          "gpu_seconds", "gpu_joules")


@app.callback(invoke_without_command=True)
def usage(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant."),
    model: str | None = typer.Option(None, "--model", help="Only this catalog model."),
    since: str | None = typer.Option(None, "--since", help="From (10m, 2h, 1d before now, or an ISO time)."),
    until: str | None = typer.Option(None, "--until", help="Up to, excluded (10m, 2h, 1d, or an ISO time)."),
    by: str = typer.Option("tenant", "--by", help="Group by tenant, model (name@version) or day (UTC)."),
    fmt: str = typer.Option("table", "--format", help="table, csv or json."),
    ledger: str | None = typer.Option(None, "--ledger", help="A SQLite file or postgresql:// URL; unset: "
                                                             "OBSERVATORY_SERVE_LEDGER_URL, else the state dir's."),
    include_shadow: bool = typer.Option(False, "--include-shadow", help="Also count the challenger's shadow "
                                        "mirrors (not billed), apart: the unbilled_* columns."),
) -> None:
    """Print the ledger's billable totals (shadow calls excluded), one line per group and currency."""
    from gpt_observatory.serving_hooks.ledger import open_store, store_location
    from gpt_observatory.serving_hooks.ledger._read import BY, UNBILLED, Filters, totals, when
    from gpt_observatory.serving_hooks.settings import load

    if by not in BY:
        raise typer.BadParameter(f"give one of {', '.join(BY)}", param_hint="--by")
    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter("give table, csv or json", param_hint="--format")
    try:
        filters = Filters(tenant, model, when(since), when(until))
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--since/--until") from None
    location = ledger or store_location(load())
    store = open_store(location)
    try:
        rows = totals(store, by, filters, include_shadow)
    except Exception as e:
        print(f"observatory usage: cannot read the ledger ({type(e).__qualname__}); check --ledger or "
              "OBSERVATORY_SERVE_LEDGER_URL", file=sys.stderr)
        raise typer.Exit(1) from None
    finally:
        store.close()
    typer.echo(render(rows, fmt, by, UNBILLED if include_shadow else ()), nl=False)


def render(rows: list[dict], fmt: str, by: str, extra: tuple[str, ...] = ()) -> str:
    if fmt == "json":
        return json.dumps({"by": by, "rows": rows}, indent=2) + "\n"
    shown = _SHOWN + extra
    header = [by if c == "key" else c for c in shown]
    cells = [["" if r[c] is None else (f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c])) for c in shown]
             for r in rows]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(cells)
        return out.getvalue()
    if not rows:
        return "no usage in the ledger for these filters\n"
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cell, widths, strict=True)))
              for cell in cells]
    return "\n".join(lines) + "\n"
