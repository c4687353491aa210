"""Dashboard specs and their rendering to Grafana dashboard JSON with grafana-foundation-sdk.

A :class:`Board` is plain data (rows of panels of PromQL queries); :func:`render` turns it into
the current dashboard schema (v1 JSON, ``schemaVersion`` 41) through Grafana's own generated
builders, so field names and defaults follow Grafana rather than us. The specs stay ours because
the live proof needs to know, per panel, what event (if any) it waits for.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    dashboard,
    prometheus,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dashboard_m
from grafana_foundation_sdk.models import prometheus as prometheus_m
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from gpt_observatory.dashboards.events import Event

Kind = Literal["timeseries", "stat", "table", "bargauge", "state"]
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
_REF_IDS = "ABCDEFGHIJ"


@dataclass(frozen=True, slots=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True, slots=True)
class Panel:
    """One panel. ``needs`` names the event without which it is empty (a GPU is inferred from
    the metrics it reads); it is shown to users in the description too."""

    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: Kind = "timeseries"
    description: str = ""
    needs: Event | None = None
    width: int = 12
    stack: bool = False


@dataclass(frozen=True, slots=True)
class Variable:
    """A query variable: ``label_values(<series selector>, <label>)``, multi-value with "All" = ``.*``."""

    name: str
    label: str
    query: str


@dataclass(frozen=True, slots=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True, slots=True)
class Board:
    uid: str
    title: str
    description: str
    variables: tuple[Variable, ...]
    rows: tuple[Row, ...]
    tags: tuple[str, ...] = field(default=("observatory",))

    def panels(self) -> Iterator[Panel]:
        for row in self.rows:
            yield from row.panels


def q(expr: str, legend: str = "") -> Query:
    return Query(" ".join(expr.split()), legend)


def render(board: Board) -> dict[str, Any]:
    """The dashboard JSON model of ``board`` (datasource chosen by the ``datasource`` variable)."""
    builder = (
        dashboard.Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags(list(board.tags))
        .editable()
        .tooltip(dashboard_m.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    for var in board.variables:
        builder = builder.with_variable(
            dashboard.QueryVariable(var.name)
            .label(var.label)
            .datasource(DATASOURCE)
            .query(var.query)
            .refresh(dashboard_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dashboard_m.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    for row in board.rows:
        builder = builder.with_row(dashboard.Row(row.title))
        for panel in row.panels:
            builder = builder.with_panel(_panel(panel))
    model = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for i, p in enumerate(_walk(model["panels"]), start=1):
        p["id"] = i
    return model


def dumps(model: dict[str, Any]) -> str:
    """Stable text of a dashboard model (what is committed)."""
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _walk(p.get("panels", []))


def _panel(spec: Panel) -> Any:
    panel: Any
    if spec.kind == "timeseries":
        panel = _timeseries(spec.stack)
    elif spec.kind == "stat":
        panel = stat.Panel().graph_mode(common_m.BigValueGraphMode.NONE)
    elif spec.kind == "table":
        panel = table.Panel()
    elif spec.kind == "bargauge":
        panel = (bargauge.Panel().display_mode(common_m.BarGaugeDisplayMode.GRADIENT)
                 .orientation(common_m.VizOrientation.HORIZONTAL))
    else:
        panel = statetimeline.Panel().show_value(common_m.VisibilityMode.NEVER)
    description = spec.description + (f" Empty until {spec.needs.text}." if spec.needs else "")
    panel = (
        panel.title(spec.title)
        .description(description.strip())
        .datasource(DATASOURCE)
        .unit(spec.unit)
        .height(8)
        .span(spec.width)
    )
    for ref, query in zip(_REF_IDS, spec.queries, strict=False):
        target = prometheus.Dataquery().expr(query.expr).ref_id(ref).datasource(DATASOURCE)
        if spec.kind in ("table", "stat", "bargauge"):
            fmt = prometheus_m.PromQueryFormat.TABLE if spec.kind == "table" else prometheus_m.PromQueryFormat.TIME_SERIES
            target = target.instant().format(fmt)
        else:
            target = target.range()
        if query.legend:
            target = target.legend_format(query.legend)
        panel = panel.with_target(target)
    return panel


def _timeseries(stack: bool = False) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .line_width(1)
        .fill_opacity(10)
        .legend(common.VizLegendOptions().display_mode(common_m.LegendDisplayMode.LIST).placement(
            common_m.LegendPlacement.BOTTOM).show_legend(True))
        .tooltip(common.VizTooltipOptions().mode(common_m.TooltipDisplayMode.MULTI).sort(common_m.SortOrder.DESCENDING))
    )
    if stack:
        panel = panel.stacking(common.StackingConfig().mode(common_m.StackingMode.NORMAL))
    return panel
