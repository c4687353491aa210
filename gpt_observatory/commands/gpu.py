"""``observatory gpu``: the GPUs as the NVML collector sees them, live or as JSON for scripts."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.table import Table

    from gpt_observatory.telemetry.gpu import GpuCollector, GpuSample

app = typer.Typer(help="GPU telemetry from NVML: a live table, or one JSON snapshot with --once --json.")

_GIB = 1 << 30


@app.callback(invoke_without_command=True)
def gpu(
    once: bool = typer.Option(False, "--once", help="Take one sample, print it and exit."),
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON: one document with --once, otherwise one line per interval."
    ),
    interval: float = typer.Option(1.0, "--interval", min=0.1, help="Seconds between samples (and table refreshes)."),
) -> None:
    """Show utilisation, memory, power, temperature, clocks and processes of every NVIDIA GPU."""
    from opentelemetry.metrics import NoOpMeterProvider
    from rich.console import Console

    from gpt_observatory.telemetry.gpu import GpuCollector

    console = Console()
    # A private collector: the view reads its snapshot and exports nothing.
    collector = GpuCollector(
        interval_s=interval, slow_interval_s=max(interval, 2.0), meter_provider=NoOpMeterProvider()
    )
    started = collector.start(background=not once)
    try:
        if not started:
            if as_json:
                typer.echo(json.dumps(_document(collector, [])))
            else:
                console.print(collector.status)
            return
        if once:
            samples = collector.snapshot()
            if as_json:
                typer.echo(json.dumps(_document(collector, samples), indent=2))
            else:
                console.print(_table(samples))
            return
        _follow(collector, console, as_json, interval)
    finally:
        collector.stop()


def _follow(collector: GpuCollector, console: Any, as_json: bool, interval: float) -> None:
    from rich.live import Live

    try:
        if as_json:
            while True:
                typer.echo(json.dumps(_document(collector, collector.snapshot())))
                time.sleep(interval)
        with Live(_table(collector.snapshot()), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(_table(collector.snapshot()), refresh=True)
    except KeyboardInterrupt:
        pass


def sample_dict(sample: GpuSample) -> dict[str, Any]:
    """A sample as JSON-ready data, in NVML's units (the field names say which), plus decoded reasons."""
    from gpt_observatory.telemetry._gpu_series import clock_event_reasons

    data = dataclasses.asdict(sample)
    reasons = sample.clock_event_reasons
    data["clock_event_reason_names"] = None if reasons is None else clock_event_reasons(reasons)
    return data


def _document(collector: GpuCollector, samples: list[GpuSample]) -> dict[str, Any]:
    return {
        "status": collector.status,
        "hostname": socket.gethostname(),
        "driver_version": collector.driver_version,
        "gpus": [sample_dict(s) for s in samples],
    }


def _table(samples: list[GpuSample]) -> Table:
    from rich.table import Table

    from gpt_observatory.telemetry._gpu_series import clock_event_reasons

    table = Table(title=f"GPUs  {time.strftime('%H:%M:%S')}", title_justify="left")
    for column in ("GPU", "Name", "Util", "Mem BW", "Memory", "Power", "Temp", "SM / Mem clock", "Clock events"):
        table.add_column(column, justify="right" if column not in ("Name", "Clock events") else "left")
    table.add_column("Processes")
    for s in samples:
        g = s.gpu
        if not g.reports_utilization:
            util = bw = "not reported (MIG)"
        else:
            util, bw = _fmt(s.utilization_pct, "{}%"), _fmt(s.memory_activity_pct, "{}%")
        used = "–" if s.memory_used_bytes is None else f"{s.memory_used_bytes / _GIB:.1f}"
        total = "–" if g.memory_total_bytes is None else f"{g.memory_total_bytes / _GIB:.1f}"
        reasons = "–" if s.clock_event_reasons is None else ", ".join(clock_event_reasons(s.clock_event_reasons))
        processes = "\n".join(
            f"{p.pid} {p.name} {_fmt(p.used_bytes and p.used_bytes >> 20, '{} MiB')}" for p in s.processes or ()
        )
        table.add_row(
            str(g.index) if g.mig_profile is None else f"{g.index} MIG {g.mig_profile}",
            g.name,
            util,
            bw,
            f"{used} / {total} GiB",
            _fmt(None if s.power_mw is None else round(s.power_mw / 1000), "{} W"),
            _fmt(s.temperature_c, "{} °C"),
            f"{_fmt(s.sm_clock_mhz, '{}')} / {_fmt(s.memory_clock_mhz, '{}')} MHz",
            reasons or "none",
            processes,
        )
    return table


def _fmt(value: object, template: str) -> str:
    return "–" if value is None else template.format(value)
