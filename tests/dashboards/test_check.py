"""`observatory dashboards check` fails naming the dashboard, panel and metric when names drift."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from gpt_observatory.dashboards.artefacts import ROOT
from gpt_observatory.dashboards.check import run

# Renames a metric in the names module as a developer would (its source, executed in place of the
# module before anything imports it), then runs the real command line.
_RENAMED_CHECK = """
import pathlib, sys
import gpt_observatory.telemetry.names as names
source = pathlib.Path(names.__file__).read_text()
old, new = sys.argv[1], sys.argv[2]
assert source.count(old) == 1, old
exec(compile(source.replace(old, new), names.__file__, "exec"), names.__dict__)
from gpt_observatory.cli import main
sys.argv = ["observatory", "dashboards", "check", "--no-promtool"]
main()
"""


def _check_with_rename(old: str, new: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _RENAMED_CHECK, old, new], capture_output=True, text=True,
                          timeout=120)


def test_committed_artefacts_pass_the_check():
    assert [str(f) for f in run()] == []


def test_a_renamed_metric_fails_the_check_naming_dashboard_panel_and_metric():
    result = _check_with_rename('"observatory.gateway.rejections"', '"observatory.gateway.refusals"')
    assert result.returncode == 1, result.stdout + result.stderr
    err = result.stderr
    assert ('grafana/gateway.json (Observatory / Gateway and auth): panel "Rate-limit hits per tenant": '
            "unknown metric observatory_gateway_rejections_total") in err
    assert 'grafana/overview.json (Observatory / Overview): panel "Rejections by reason"' in err
    assert "grafana/gateway.json: differs from what the code builds" in err


def test_a_renamed_attribute_fails_the_check_naming_the_label():
    result = _check_with_rename('TENANT: Final = "observatory.tenant"', 'TENANT: Final = "observatory.customer"')
    assert result.returncode == 1
    assert 'panel "Requests per tenant": unknown label observatory_tenant' in result.stderr
    assert 'variable "tenant": unknown label observatory_tenant' in result.stderr


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "artefacts"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns("*.py", "__pycache__", "boards"))
    return root


def test_a_query_that_does_not_parse_is_named(tmp_path):
    root = _copy(tmp_path)
    path = root / "grafana" / "overview.json"
    model = json.loads(path.read_text())
    panel = next(p for p in model["panels"] if p.get("title") == "Active requests")
    panel["targets"][0]["expr"] = "sum by (job) (http_server_active_requests{job=~\"$job\"}"  # unbalanced
    path.write_text(json.dumps(model))
    found = [str(f) for f in run(root, prometheus_files=False)]
    assert any('panel "Active requests": does not parse' in f for f in found), found


def test_an_unknown_collector_component_is_named(tmp_path):
    root = _copy(tmp_path)
    path = root / "otelcol" / "config.yaml"
    path.write_text(path.read_text().replace("exporters:\n      - otlp/traces", "exporters:\n      - otlp/jaeger"))
    found = [str(f) for f in run(root, promtool=None)]
    assert "otelcol/config.yaml: service.pipelines.traces: exporter 'otlp/jaeger' is not defined under exporters" in found
    assert "otelcol/config.yaml: exporters.otlp/traces: defined but used by no pipeline" in found
