"""Evaluate every dashboard query and rule expression on a live Prometheus (the live proof).

Panel queries run as instant queries with Grafana's variables set to "All" and its interval
variables to fixed windows. A recording rule runs as written. An alert expression returns
nothing while it does not fire, so it runs with its comparisons made ``bool``
(:func:`dashboards.promql.boolify`): that returns a 0/1 sample for each series the condition
looks at, proving the selectors and vector matching meet real series. Whether it fires now is
reported beside it.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpt_observatory.dashboards import events, promql


@dataclass(frozen=True, slots=True)
class LiveQuery:
    where: str
    expr: str  # as evaluated
    needs: tuple[str, ...] = ()  # event keys (dashboards.events) it waits for
    firing_expr: str | None = None  # an alert's own expression (is it firing now?)


@dataclass(slots=True)
class Outcome:
    query: LiveQuery
    samples: int = 0
    error: str | None = None
    firing: bool | None = None


@dataclass(slots=True)
class Report:
    lines: list[str] = field(default_factory=list)
    unexpected: list[Outcome] = field(default_factory=list)  # empty or failing though nothing excused it
    waiting: list[Outcome] = field(default_factory=list)  # empty, waiting for an event that did not happen


def gpu_series() -> frozenset[str]:
    """Sample names only a machine with an NVIDIA GPU produces."""
    from gpt_observatory.dashboards.series import GPU_NAME_PREFIXES
    from gpt_observatory.telemetry import names

    ours = {k for k, m in names.all_prometheus_series().items() if m.name.startswith(GPU_NAME_PREFIXES)}
    return frozenset(ours) | frozenset(names.DCGM_SERIES)


def _needs(expr: str, declared: events.Event | None, gpu: frozenset[str]) -> tuple[str, ...]:
    keys = [declared.key] if declared else []
    if promql.references(expr).metrics & gpu:
        keys.append(events.GPU.key)
    return tuple(keys)


def live_queries() -> list[LiveQuery]:
    """Every query the artefacts hold, in the form to evaluate and with the events each needs."""
    from gpt_observatory.dashboards.boards import all_boards
    from gpt_observatory.dashboards.rules import Alert, groups

    gpu = gpu_series()
    out: list[LiveQuery] = []
    for stem, board in all_boards().items():
        for var in board.variables:
            parsed = promql.label_values(var.query)
            expr = f"count by ({parsed[1]}) ({parsed[0]})" if parsed else var.query
            out.append(LiveQuery(f'{stem}: variable "{var.name}"', promql.instant(expr), _needs(expr, None, gpu)))
        for panel in board.panels():
            for i, query in enumerate(panel.queries):
                suffix = f" query {'ABCDEFGHIJ'[i]}" if len(panel.queries) > 1 else ""
                out.append(LiveQuery(f'{stem}: panel "{panel.title}"{suffix}', promql.instant(query.expr),
                                     _needs(query.expr, panel.needs, gpu)))
    for group in groups():
        for rule in group.rules:
            if isinstance(rule, Alert):
                out.append(LiveQuery(f'alert "{rule.alert}"', promql.boolify(rule.expr),
                                     _needs(rule.expr, rule.needs, gpu), firing_expr=rule.expr))
            else:
                out.append(LiveQuery(f'record "{rule.record}"', rule.expr, _needs(rule.expr, None, gpu)))
    return out


def query(base_url: str, expr: str, timeout: float = 10.0) -> list[dict]:
    """An instant query; the result vector (raises ``RuntimeError`` on a Prometheus error)."""
    url = f"{base_url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    if body.get("status") != "success":
        raise RuntimeError(f"{body.get('errorType')}: {body.get('error')}")
    result = body["data"]["result"]
    return result if isinstance(result, list) else [result]


def evaluate(base_url: str, queries: list[LiveQuery]) -> list[Outcome]:
    outcomes = []
    for q in queries:
        outcome = Outcome(q)
        try:
            outcome.samples = len(query(base_url, q.expr))
            if q.firing_expr is not None:
                outcome.firing = bool(query(base_url, q.firing_expr))
        except (RuntimeError, OSError) as e:
            outcome.error = str(e)
        outcomes.append(outcome)
    return outcomes


def report(outcomes: list[Outcome], happened: set[str], json_out: Path | None = None) -> Report:
    """Sort outcomes: with data, waiting for an event that did not happen, or unexpectedly empty."""
    rep = Report()
    for o in outcomes:
        missing = [k for k in o.query.needs if k not in happened]
        if o.error is not None:
            rep.unexpected.append(o)
            rep.lines.append(f"ERROR   {o.query.where}: {o.error}")
        elif o.samples:
            fire = " (alert condition true now)" if o.firing else ""
            rep.lines.append(f"data    {o.query.where}: {o.samples} series{fire}")
        elif missing:
            rep.waiting.append(o)
            rep.lines.append(f"waiting {o.query.where}: needs {', '.join(missing)}")
        else:
            rep.unexpected.append(o)
            rep.lines.append(f"EMPTY   {o.query.where}: {o.query.expr}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps([asdict(o) for o in outcomes], indent=2) + "\n")
    return rep
