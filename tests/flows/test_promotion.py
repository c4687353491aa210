"""Promotion behind gates, decision records, rollback, and the champion in the MLflow UI.

One model, three versions (weak, strong, mid), promoted in that order on MLflow/PostgreSQL:
the first passes the absolute bounds, the second beats it, the third does not.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest
from typer.testing import CliRunner

from gpt_observatory.flows.stores import client_for
from tests.flows.conftest import ModelFactory


@dataclass
class Scenario:
    model: str
    versions: list[str]
    decisions: list[Any]
    champion_after: str | None
    previous_after: str | None
    overrides: dict[str, Any]


@pytest.fixture(scope="module")
def scenario(pg_models: ModelFactory) -> Scenario:
    from gpt_observatory.flows.promotion import promote
    from gpt_observatory.flows.registry import Registry

    model, versions = pg_models.new_model("weak", "strong", "mid", prefix="promo")
    overrides = pg_models.overrides()
    decisions = [promote(model_name=model, version=v, overrides=overrides) for v in versions]
    registry = Registry(client_for(pg_models.uri), model)
    return Scenario(model, versions, decisions, registry.alias("champion"), registry.alias("previous"), overrides)


def test_first_version_is_judged_on_absolute_bounds(scenario: Scenario) -> None:
    first = scenario.decisions[0]
    assert first.decision == "promoted"
    assert first.from_version is None
    assert first.reason.startswith("first version, passed")


def test_better_challenger_takes_champion_and_previous_stays_reachable(scenario: Scenario) -> None:
    second = scenario.decisions[1]
    assert (second.decision, second.from_version, second.champion) == ("promoted", "1", "2")
    assert "champion_loss" in second.figures and second.figures["challenger_loss"] < second.figures["champion_loss"]
    assert scenario.previous_after == "1"  # models:/NAME@previous


def test_failing_gate_leaves_champion_unchanged_and_records_why(scenario: Scenario, pg_models: ModelFactory) -> None:
    from prefect.artifacts import Artifact

    from gpt_observatory.flows import history

    third = scenario.decisions[2]
    assert third.decision == "rejected"
    assert scenario.champion_after == "2"
    assert "does not beat the champion" in third.reason
    client = client_for(pg_models.uri)
    tags = client.get_model_version(scenario.model, "3").tags
    assert tags["observatory.last_decision"] == "rejected"
    assert "does not beat" in tags["observatory.last_decision_reason"]
    recorded = [d for d in history.read(client, scenario.model) if d.version == "3"]
    assert recorded and recorded[0].reason == third.reason and recorded[0].flow_run_id
    artifact = Artifact.get(f"{scenario.model}-decision")
    assert artifact is not None and "rejected" in str(artifact.data)


def test_history_command_lists_every_decision(scenario: Scenario, pg_models: ModelFactory, monkeypatch) -> None:
    from gpt_observatory.commands.pipeline import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", pg_models.uri)
    listed = CliRunner().invoke(app, ["history", "--model", scenario.model, "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [(r["decision"], r["from_version"], r["version"]) for r in rows[:3]] == [
        ("promoted", None, "1"), ("promoted", "1", "2"), ("rejected", "2", "3")
    ]
    assert all(r["flow_run_id"] and r["at"] for r in rows)
    table = CliRunner().invoke(app, ["history", "--model", scenario.model], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "rejected" in table.output and "champion: v" in table.output


def _chromium(url: str, profile, *args: str) -> str:
    return subprocess.run(
        ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=10000", *args, url],
        capture_output=True, text=True, timeout=120,
    ).stdout


def test_mlflow_ui_shows_champion_on_the_right_version(
    scenario: Scenario, pg_mlflow, tmp_path, artifacts_dir
) -> None:
    """The champion is v2 while v3 (rejected) is the newest: the UI must put the alias on v2."""
    url = f"{pg_mlflow.url}/#/models/{scenario.model}"
    dom = _chromium(url, tmp_path / "profile", "--dump-dom")
    aliases: dict[str, list[str]] = {}
    for row in dom.split('role="row"')[1:]:
        found = re.search(rf"#/models/{re.escape(scenario.model)}/versions/(\d+)", row)
        if found:
            aliases[found.group(1)] = re.findall(r"@&nbsp;([\w-]+)", row)
    assert "champion" in aliases.get(scenario.champion_after or "", []), aliases
    assert all("champion" not in tags for v, tags in aliases.items() if v != scenario.champion_after)
    shot = artifacts_dir / "flows-mlflow-ui-champion.png"
    _chromium(url, tmp_path / "profile", f"--screenshot={shot}")
    assert shot.stat().st_size > 10_000


def test_rollback_restores_the_previous_champion(scenario: Scenario, pg_models: ModelFactory) -> None:
    from gpt_observatory.flows import history
    from gpt_observatory.flows.promotion import rollback
    from gpt_observatory.flows.registry import Registry

    decision = rollback(model_name=scenario.model, reason="test", overrides=scenario.overrides)
    client = client_for(pg_models.uri)
    assert (decision.decision, decision.from_version, decision.champion) == ("rolled_back", "2", "1")
    assert Registry(client, scenario.model).alias("champion") == "1"
    assert history.read(client, scenario.model)[-1].decision == "rolled_back"
    with pytest.raises(ValueError, match="nothing to roll back to"):
        rollback(model_name=scenario.model, overrides=scenario.overrides)
    assert Registry(client, scenario.model).alias("champion") == "1"
