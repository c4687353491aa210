"""Rule specs: plain data that :mod:`dashboards.rules` renders into ``alerts.yml``."""

from __future__ import annotations

from dataclasses import dataclass

from gpt_observatory.dashboards.events import Event


@dataclass(frozen=True, slots=True)
class Recording:
    record: str
    expr: str


@dataclass(frozen=True, slots=True)
class Alert:
    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    needs: Event | None = None  # an event the condition's series wait for (a GPU is inferred)
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    rules: tuple[Recording | Alert, ...]
