"""The demo's cost table: this run's rows of the usage ledger, per tenant, read by the very command a
user runs afterwards (``observatory usage --by tenant --since START --ledger PATH``, here with
``--format json``), and shown as a table with each tenant's tier."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gpt_observatory.demo.stack import observatory_command


def since_text(epoch_s: float) -> str:
    """The run's start, to the second below it (so no row of the run falls before it), as ``--since`` takes it."""
    return datetime.fromtimestamp(int(epoch_s), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def usage_command(ledger: Path, since: str) -> list[str]:
    return [*observatory_command(), "usage", "--by", "tenant", "--since", since, "--ledger", str(ledger)]


def read(ledger: Path, since: str, expected_rows: int, timeout: float = 15.0) -> dict[str, Any]:
    """The ledger's totals per tenant (``observatory usage``'s JSON rows) once they hold
    ``expected_rows`` requests (at once after the gateway's shutdown shipped its spool; a gateway
    still serving ships every ``ledger_ship_interval_s``), or what they hold at ``timeout``."""
    command = usage_command(ledger, since)
    run = [*command, "--format", "json"]
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(run, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        rows = json.loads(done.stdout)["rows"]
        if sum(r["requests"] for r in rows) >= expected_rows or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    return {"command": shlex.join(command), "ledger": str(ledger), "since": since, "rows": rows,
            "source": "the usage ledger, read by `observatory usage --format json`"}


def totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Requests, tokens and cost (micro-units, one currency) over ``rows``."""
    return {"requests": sum(r["requests"] for r in rows), "input_tokens": sum(r["input_tokens"] for r in rows),
            "output_tokens": sum(r["output_tokens"] for r in rows),
            "cost_micro": sum(r["cost_micro"] or 0 for r in rows)}


def render(usage: dict[str, Any], tiers: dict[str, str], console: Console) -> None:
    """The cost table, then the command that prints it again."""
    table = Table(title="Usage and cost per tenant (from the usage ledger)", title_justify="left")
    for name, justify in (("tenant", "left"), ("tier", "left"), ("requests", "right"), ("tokens in", "right"),
                          ("tokens out", "right"), ("cost", "right"), ("currency", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in usage["rows"]:
        table.add_row(r["key"], tiers.get(r["key"], "-"), str(r["requests"]), str(r["input_tokens"]),
                      str(r["output_tokens"]), r["cost"] or "-", r["currency"] or "- (refused, not priced)")
    console.print(table)
    console.print(f"the same table again: {usage['command']}", soft_wrap=True, highlight=False, markup=False)
