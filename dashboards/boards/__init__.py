"""The Grafana dashboards, one module each; :func:`all_boards` lists them in export order."""

from __future__ import annotations

from gpt_observatory.dashboards._grafana import Board


def all_boards() -> dict[str, Board]:
    """File stem -> dashboard spec."""
    from gpt_observatory.dashboards.boards import fleet, gateway, gpu, health, inference, overview, pipeline, usage

    return {
        "overview": overview.board(),
        "gateway": gateway.board(),
        "inference": inference.board(),
        "gpu": gpu.board(),
        "pipeline": pipeline.board(),
        "telemetry-health": health.board(),
        "fleet": fleet.board(),
        "usage": usage.board(),
    }
