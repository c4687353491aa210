"""``observatory dashboards check``: the committed artefacts against the names module and Prometheus.

1. Every committed artefact equals what the code builds (``observatory dashboards export``).
2. Every metric a panel, a template variable or a rule reads is one the project emits
   (``telemetry.names``), a DCGM-compatible series, a recording rule of ``alerts.yml`` or one of
   Prometheus's own series; every label is an attribute of the names module or a Prometheus label.
3. Every expression parses: Prometheus's own parser, through ``promtool check rules`` on a
   temporary rules file holding each panel query as a recording rule (promtool has no command
   that parses a bare expression). ``promtool check config``, ``check rules`` and ``test rules``
   pass on the committed files.
4. The Collector configuration is consistent (:func:`dashboards.otelcol.problems`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt_observatory.dashboards import promql
from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards.artefacts import ROOT, stale
from gpt_observatory.dashboards.scrape import RULE_FILE

_RULE_ERROR = re.compile(r'"expression_(\d+)": (.*)')


@dataclass(frozen=True, slots=True)
class Finding:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True, slots=True)
class Expression:
    where: str  # e.g. 'grafana/gateway.json (Observatory / Gateway and auth): panel "Rate-limit hits"'
    expr: str
    labels: tuple[str, ...] = ()  # labels read outside the expression (a variable's label_values label)


def dashboard_expressions(root: Path = ROOT) -> Iterator[Expression]:
    """Every query of every committed dashboard: panel targets and template variables."""
    for path in sorted((root / "grafana").glob("*.json")):
        model = json.loads(path.read_text())
        name = f"{path.relative_to(root)} ({model.get('title', '?')})"
        for panel in _panels(model.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield Expression(f'{name}: panel "{panel.get("title", "?")}"', target["expr"])
        for var in model.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                query = var.get("query")
                query = query.get("query", "") if isinstance(query, dict) else query or ""
                parsed = promql.label_values(query)
                expr, labels = (parsed[0], (parsed[1],)) if parsed else (query, ())
                yield Expression(f'{name}: variable "{var.get("name")}"', expr, labels)


def rule_expressions(root: Path = ROOT) -> Iterator[Expression]:
    """Every expression of the committed rule file."""
    doc = _rules(root)
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            kind, name = ("alert", rule["alert"]) if "alert" in rule else ("record", rule.get("record"))
            yield Expression(f'prometheus/{RULE_FILE}: {kind} "{name}"', rule["expr"])


def recorded_series(root: Path = ROOT) -> frozenset[str]:
    doc = _rules(root)
    return frozenset(r["record"] for g in doc.get("groups", []) for r in g.get("rules", []) if "record" in r)


def known_series(root: Path = ROOT) -> frozenset[str]:
    from gpt_observatory.telemetry import names

    return frozenset(names.all_prometheus_series()) | frozenset(names.DCGM_SERIES) | frozenset(
        s.PROMETHEUS_SERIES
    ) | recorded_series(root)


def known_labels() -> frozenset[str]:
    """Labels of the project's attributes (the dotted string constants of the names module) and Prometheus's."""
    from gpt_observatory.telemetry import names

    attributes = {names.prometheus_label(v) for v in vars(names).values() if isinstance(v, str) and "." in v}
    return frozenset(attributes) | frozenset(names.DCGM_LABELS) | frozenset(names.DCGM_MIG_LABELS) | s.PROMETHEUS_LABELS


def check_references(exprs: list[Expression], series: frozenset[str], labels: frozenset[str]) -> list[Finding]:
    found = []
    for e in exprs:
        try:
            refs = promql.references(e.expr)
        except ValueError as err:
            found.append(Finding(e.where, str(err)))
            continue
        found += [Finding(e.where, f"unknown metric {m}") for m in sorted(refs.metrics - series)]
        found += [Finding(e.where, f"unknown label {lab}") for lab in sorted((refs.labels | set(e.labels)) - labels)]
    return found


def check_syntax(exprs: list[Expression], promtool: str) -> list[Finding]:
    """Parse every expression with Prometheus's parser (Grafana variables substituted)."""
    ok, output = _promtool_rules(promtool, [e.expr for e in exprs])
    if ok:
        return []
    # promtool names each failing rule: '... rule 3, "expression_2": could not parse expression: ...'
    errors = {int(m.group(1)): m.group(2) for m in _RULE_ERROR.finditer(output)}
    if not errors:
        return [Finding("promtool", f"check rules failed on the expressions: {output.strip()}")]
    return [Finding(exprs[i].where, f"does not parse: {message}") for i, message in sorted(errors.items())]


def check_prometheus_files(root: Path, promtool: str) -> list[Finding]:
    prom = root / "prometheus"
    found = []
    for args, target in ((["check", "config"], "prometheus.yml"), (["check", "rules"], "alerts.yml"),
                         (["test", "rules"], "alerts_test.yml")):
        run = subprocess.run([promtool, *args, target], cwd=prom, capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            found.append(Finding(f"prometheus/{target}", f"promtool {' '.join(args)} failed:\n{run.stdout}{run.stderr}"))
    return found


def check_collector(root: Path = ROOT) -> list[Finding]:
    import yaml

    from gpt_observatory.dashboards.otelcol import problems

    config = yaml.safe_load((root / "otelcol" / "config.yaml").read_text()) or {}
    return [Finding("otelcol/config.yaml", p) for p in problems(config)]


def run(root: Path = ROOT, promtool: str | None = "promtool", prometheus_files: bool = True) -> list[Finding]:
    """Every finding; empty when the artefacts are sound. ``promtool=None`` skips Prometheus's parser;
    ``prometheus_files=False`` skips promtool's config check and rule unit tests."""
    found = [Finding(rel, "differs from what the code builds; run `observatory dashboards export`")
             for rel in stale(root)]
    exprs = [*dashboard_expressions(root), *rule_expressions(root)]
    found += check_references(exprs, known_series(root), known_labels())
    if promtool is not None:
        binary = shutil.which(promtool)
        if binary is None:
            found.append(Finding("promtool", f"{promtool!r} not found: install Debian's prometheus package "
                                             "(or pass --no-promtool to skip the syntax checks)"))
        else:
            found += check_syntax(exprs, binary)
            if prometheus_files:
                found += check_prometheus_files(root, binary)
    found += check_collector(root)
    return found


def _rules(root: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((root / "prometheus" / RULE_FILE).read_text()) or {}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def _promtool_rules(promtool: str, exprs: list[str]) -> tuple[bool, str]:
    import yaml

    doc = {"groups": [{"name": "expressions", "rules": [
        {"record": f"expression_{i}", "expr": promql.instant(e)} for i, e in enumerate(exprs)
    ]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", prefix="observatory-exprs-") as f:
        yaml.safe_dump(doc, f)
        f.flush()
        run = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True, timeout=120)
    return run.returncode == 0, run.stdout + run.stderr
