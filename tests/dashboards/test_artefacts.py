"""The committed artefacts are what the code builds, and Prometheus's own tools accept them."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from gpt_observatory.dashboards.artefacts import ROOT, build, stale
from gpt_observatory.dashboards.scrape import GATEWAY_JOB, GPU_JOB, PUSHGATEWAY_JOB
from tests.components import require_binary

BOARDS = sorted((ROOT / "grafana").glob("*.json"))


def test_committed_artefacts_equal_what_the_code_builds():
    assert stale() == [], "run `observatory dashboards export` and commit the result"
    assert set(build()) == {str(p.relative_to(ROOT)) for p in ROOT.glob("*/*") if p.suffix in (".json", ".yml", ".yaml")}


@pytest.mark.parametrize("args,target", [
    (["check", "config"], "prometheus.yml"),
    (["check", "rules"], "alerts.yml"),
    (["test", "rules"], "alerts_test.yml"),
])
def test_promtool_accepts_the_prometheus_files(args, target):
    run = subprocess.run([require_binary("promtool"), *args, target], cwd=ROOT / "prometheus",
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr


def test_scrape_config_reaches_gateway_gpu_collector_and_pushgateway():
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs[GATEWAY_JOB]["static_configs"][0]["targets"] == ["127.0.0.1:8000"]
    assert jobs[GATEWAY_JOB]["metrics_path"] == "/metrics"
    assert jobs[GPU_JOB]["static_configs"][0]["targets"] == ["127.0.0.1:9464"]  # telemetry `prometheus` default
    assert jobs[PUSHGATEWAY_JOB]["honor_labels"] is True
    assert config["rule_files"] == ["alerts.yml"]


def test_alerts_cover_what_operators_need():
    doc = yaml.safe_load((ROOT / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}
    for name in ("GatewayAvailabilityErrorBudgetBurnFast", "GatewayAvailabilityErrorBudgetBurnSlow",
                 "GatewayLatencyErrorBudgetBurnFast", "TtftErrorBudgetBurnFast", "GpuSaturated",
                 "GpuThermalThrottling", "AuthFailureSpike", "RateLimitSpike", "TelemetryExportFailing",
                 "TelemetryDropping", "PipelineRunFailed", "NoSuccessfulPromotion"):
        assert name in alerts, name
        assert alerts[name]["labels"]["severity"] in ("page", "ticket")
        assert alerts[name]["annotations"]["summary"] and alerts[name]["annotations"]["description"]
    fast = alerts["GatewayAvailabilityErrorBudgetBurnFast"]["expr"]
    assert "bad_ratio_rate1h > 0.072" in fast and "bad_ratio_rate5m > 0.072" in fast  # 14.4 x (1 - 99.5%)
    assert "bad_ratio_rate6h > 0.03" in fast and "bad_ratio_rate30m > 0.03" in fast  # 6 x


@pytest.mark.parametrize("path", BOARDS, ids=[p.stem for p in BOARDS])
def test_dashboards_are_importable_current_schema_with_a_datasource_variable(path):
    model = json.loads(path.read_text())
    assert model["schemaVersion"] >= 39 and model["uid"].startswith("observatory-")
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "job" in variables
    panels = [p for p in model["panels"] if p["type"] != "row"]
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), "panel titles must be unique: the check names panels by title"
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])


def test_variables_for_service_model_tenant_and_gpu():
    names = {v["name"] for p in BOARDS for v in json.loads(p.read_text())["templating"]["list"]}
    assert {"datasource", "job", "model", "tenant", "gpu"} <= names


def test_energy_per_token_is_a_ratio_of_rates():
    inference = json.loads((ROOT / "grafana" / "inference.json").read_text())
    panel = next(p for p in inference["panels"] if p["title"] == "Energy per output token")
    expr = panel["targets"][0]["expr"]
    assert expr.startswith("sum (rate(hw_energy_joules_total{") and " / sum (rate(observatory_gen_ai_output_tokens_total{" in expr
