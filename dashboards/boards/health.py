"""Telemetry health: what each process exported, what failed, what was dropped, who is scraped."""

from __future__ import annotations

from gpt_observatory.dashboards import events
from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards._grafana import Board, Panel, Row, q
from gpt_observatory.dashboards.boards._common import JOB_VAR
from gpt_observatory.dashboards.query import rate, ratio, sel
from gpt_observatory.telemetry import names


def board() -> Board:
    exported = s.total(names.TELEMETRY_EXPORTED)
    per_backend = (s.JOB, s.TELEMETRY_SIGNAL, s.TELEMETRY_BACKEND)
    legend = f"{{{{job}}}} {{{{{s.TELEMETRY_SIGNAL}}}}} {{{{{s.TELEMETRY_BACKEND}}}}}"
    return Board(
        uid="observatory-telemetry-health",
        title="Observatory / Telemetry health",
        description="Export health of every process: items exported, export failures, queue drops, scrapes.",
        variables=(JOB_VAR,),
        rows=(
            Row("Export", (
                Panel("Items exported per second",
                      (q(rate(exported, s.BY_JOB, by=(*per_backend, s.TELEMETRY_OUTCOME)),
                         f"{legend} {{{{{s.TELEMETRY_OUTCOME}}}}}"),), unit="short"),
                Panel("Export failure ratio",
                      (q(ratio(exported, f'{s.TELEMETRY_OUTCOME}="failure"', s.BY_JOB, by=per_backend), legend),),
                      unit="percentunit", description="Share of items a backend failed to export."),
                Panel("Export failures per second",
                      (q(rate(exported, s.BY_JOB, f'{s.TELEMETRY_OUTCOME}="failure"', by=per_backend), legend),),
                      needs=events.EXPORT_FAILURE),
                Panel("Items dropped per second",
                      (q(rate(s.total(names.TELEMETRY_DROPPED), s.BY_JOB, by=per_backend), legend),),
                      description="Dropped before export because a bounded queue was full."),
            )),
            Row("Scrapes", (
                Panel("Targets up", (q(sel(s.UP, s.BY_JOB), "{{job}} {{instance}}"),), kind="state", width=8),
                Panel("Scrape duration", (q(sel(s.SCRAPE_DURATION, s.BY_JOB), "{{job}} {{instance}}"),),
                      unit="s", width=8),
                Panel("Services reporting", (q(sel(s.TARGET_INFO, s.BY_JOB)),), kind="table", width=8,
                      description="OpenTelemetry resource of each scraped process."),
            )),
        ),
    )
