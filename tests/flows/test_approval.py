"""The approval gate on a real Prefect server and MLflow on PostgreSQL.

One model (weak v1 champion, strong v2, mid v3; approval required by the per-model override):
v2 waits and ``pending`` lists it with its figures; while it waits no promotion lock is held, so
v3 is judged meanwhile and times out; ``reject`` answers v2; v2 again, ``approve``, moves the alias.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from typer.testing import CliRunner

from gpt_observatory.flows.stores import client_for
from gpt_observatory.telemetry import names
from tests.flows.conftest import ModelFactory, in_thread, memory_telemetry


def cli(*args: str) -> Any:
    from gpt_observatory.commands.pipeline import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def waiting(model: str, version: str, timeout: float = 90) -> Any:
    """The pending approval of ``model`` v``version``, once the flow run waits."""
    from gpt_observatory.flows.approval import pending

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in pending() if (p.model, p.version) == (model, version)]
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"{model} v{version} never waited for approval")


@dataclass
class Scenario:
    model: str
    versions: list[str]
    listed: list[dict[str, Any]]  # pending --json while v2 waits
    table: str  # pending's table
    lock_free_while_waiting: dict[str, Any]
    decisions: dict[str, Any]  # timeout, reject, approve
    champion_after: dict[str, str | None]
    answers: dict[str, Any]  # CLI results
    metrics: dict[str, list[Any]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def scenario(pg_models: ModelFactory) -> Scenario:
    from gpt_observatory.flows.decisions import lock_name
    from gpt_observatory.flows.lease import LEASE_TAG
    from gpt_observatory.flows.promotion import promote
    from gpt_observatory.flows.registry import Registry

    model, versions = pg_models.new_model("weak", "strong", "mid", prefix="approve")
    v1, v2, v3 = versions
    client = client_for(pg_models.uri)
    registry = Registry(client, model)
    handle = memory_telemetry()
    assert promote(model_name=model, version=v1, overrides=pg_models.overrides()).decision == "promoted"
    gated = pg_models.overrides(approval_models={model: "required"}, approval_poll_s=1, approval_timeout_s=60)

    def start(pool: ThreadPoolExecutor, version: str, **extra: Any) -> Future:
        return in_thread(pool, promote, model_name=model, version=version, overrides={**gated, **extra})

    def result(future: Future) -> Any:
        return future.result(timeout=90)

    champion_after: dict[str, str | None] = {}
    decisions: dict[str, Any] = {}
    answers: dict[str, Any] = {}
    with ThreadPoolExecutor(2) as pool:
        first = start(pool, v2)
        v2_run = waiting(model, v2).run_id
        listed = json.loads(cli("pending", "--json").stdout)
        table = cli("pending").stdout
        lock = _lock_slots(lock_name(model))
        # v3 takes the locks, is judged and waits too while v2 still waits
        second = start(pool, v3, approval_timeout_s=3)
        waiting(model, v3)
        free = {"lease_tag": client.get_registered_model(model).tags.get(LEASE_TAG), "active_slots": lock}
        decisions["timeout"] = result(second)
        champion_after["timeout"] = registry.alias("champion")
        answers["late"] = cli("approve", str(decisions["timeout"].flow_run_id), "--approver", "carol",
                              "--reason", "too late")
        answers["reject"] = cli("reject", v2_run, "--approver", "alice", "--reason", "not on a Friday")
        decisions["reject"] = result(first)
        champion_after["reject"] = registry.alias("champion")
        third = start(pool, v2)
        again = waiting(model, v2)
        answers["approve"] = cli("approve", again.run_id, "--approver", "bob", "--reason", "figures look good")
        decisions["approve"] = result(third)
        champion_after["approve"] = registry.alias("champion")
    metrics = handle.memory.metrics()
    return Scenario(model, versions, listed, table, free, decisions, champion_after, answers, metrics)


def _lock_slots(name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def test_pending_lists_the_waiting_run_with_its_figures(scenario: Scenario) -> None:
    [p] = [p for p in scenario.listed if p["model"] == scenario.model]
    assert (p["model"], p["version"], p["champion"]) == (scenario.model, scenario.versions[1], scenario.versions[0])
    assert p["figures"]["challenger_loss"] < p["figures"]["champion_loss"]
    assert p["run_id"] in scenario.table and scenario.model in scenario.table and "loss" in scenario.table


def test_a_waiting_run_holds_no_promotion_lock(scenario: Scenario) -> None:
    assert scenario.lock_free_while_waiting == {"lease_tag": None, "active_slots": 0}
    assert scenario.decisions["timeout"].decision == "approval_timeout"  # judged while another one waited


def test_a_timeout_counts_as_rejected_and_leaves_the_champion(scenario: Scenario) -> None:
    d = scenario.decisions["timeout"]
    assert (d.decision, d.champion, d.approver) == ("approval_timeout", scenario.versions[0], None)
    assert d.waited_s >= 3 and "no answer within 3s" in d.reason
    assert scenario.champion_after["timeout"] == scenario.versions[0]
    late = scenario.answers["late"]
    assert late.exit_code == 1 and "not waiting for approval" in late.output


def test_reject_leaves_the_champion(scenario: Scenario) -> None:
    assert scenario.answers["reject"].exit_code == 0, scenario.answers["reject"].output
    d = scenario.decisions["reject"]
    assert (d.decision, d.champion, d.approver, d.approval_reason) == (
        "rejected_by_approver", scenario.versions[0], "alice", "not on a Friday")
    assert scenario.champion_after["reject"] == scenario.versions[0]


def test_approve_moves_the_champion(scenario: Scenario) -> None:
    assert scenario.answers["approve"].exit_code == 0, scenario.answers["approve"].output
    d = scenario.decisions["approve"]
    assert (d.decision, d.from_version, d.champion, d.approver) == (
        "approved", scenario.versions[0], scenario.versions[1], "bob")
    assert scenario.champion_after["approve"] == scenario.versions[1]


def test_each_decision_and_its_approver_is_in_the_alias_history(
    scenario: Scenario, pg_models: ModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpt_observatory.flows import history

    past = history.read(client_for(pg_models.uri), scenario.model)
    got = [(d.decision, d.version, d.approver, d.approval_reason) for d in past]
    v1, v2, v3 = scenario.versions
    assert got == [("promoted", v1, None, None), ("approval_timeout", v3, None, "no answer within 3s"),
                   ("rejected_by_approver", v2, "alice", "not on a Friday"),
                   ("approved", v2, "bob", "figures look good")]
    assert all(d.waited_s > 0 for d in past[1:])
    assert history.champion_line(past) == [v1, v2]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pg_models.uri)
    listed = cli("history", "--model", scenario.model, "--json")
    assert [(r["decision"], r["approver"]) for r in json.loads(listed.stdout)][1:] == [
        ("approval_timeout", None), ("rejected_by_approver", "alice"), ("approved", "bob")]
    table = cli("history", "--model", scenario.model).stdout
    assert f"approved v{v2}" in table and "approved by bob" in table


def test_pipeline_metrics_count_each_approval_decision(scenario: Scenario) -> None:
    points = scenario.metrics.get(names.PIPELINE_DECISIONS.name, [])
    counted = {p.attributes[names.PIPELINE_DECISION] for p in points
               if p.attributes.get(names.MODEL_NAME) == scenario.model and p.value > 0}
    assert counted == {"promoted", "approval_timeout", "rejected_by_approver", "approved"}
    assert counted <= set(names.PIPELINE_DECISIONS_ALL)
