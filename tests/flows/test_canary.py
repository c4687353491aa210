"""The closed loop on real components: two ``observatory serve`` processes split traffic between the
champion and the challenger alias, a real Prometheus scrapes them every second, the ``canary`` flow
judges the challenger from Prometheus's HTTP API and the ``guard`` flow rolls a degrading champion
back. Versions are the configurable test model (``canary_model.py``): a bad one is genuinely slow or
failing in the gateway. The tests run in order on one registered model:

    v1 champion ─ v2 too little traffic (inconclusive) ─ v3 failing, v4 slow (rejected)
                ─ v5 good (promoted, no failed request) ─ v5 degrades (guard rolls back to v1)
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpt_observatory.flows.stores import client_for
from gpt_observatory.telemetry import names
from tests import components
from tests.flows.canary_support import Load, ask, bootstrap_champion, gateway, register, serving
from tests.flows.conftest import in_thread

# Seconds-long windows; gates set so that noise on a shared 2-core box does not decide.
LIVE = {
    "step_s": 1.0, "min_requests": 20, "max_error_rate": 0.05, "max_error_rate_increase": 0.02,
    "max_p95_duration_s": 0.5, "max_p95_duration_regression": 1.0, "max_p95_ttft_s": 0.5,
    "max_p95_ttft_regression": 1.0, "latency_tolerance_s": 0.1, "max_tokens_per_s_drop": 0.6,
    "guard_duration_s": 0, "guard_window_s": 3, "guard_min_requests": 8, "query_timeout_s": 5,
}


@dataclass
class Rig:
    model: str
    mlflow: str
    prometheus: str
    gateways: list[str]
    workdir: Path
    load: Load
    versions: list[str] = field(default_factory=list)

    def register(self, **config: Any) -> str:
        label = f"v{len(self.versions) + 1}"
        version = register(self.mlflow, self.model, **{"label": label, "delay_s": 0.005, **config})
        assert version == label[1:], "versions and labels go in step"
        self.versions.append(version)
        return version

    def overrides(self) -> dict[str, Any]:
        return {"tracking_uri": self.mlflow, "retry_delay_s": 0.5, "lease_settle_s": 0.1, "progress": False}

    def aliases(self) -> tuple[str | None, str | None]:
        from gpt_observatory.flows.registry import CHALLENGER, CHAMPION, Registry

        registry = Registry(client_for(self.mlflow), self.model)
        return registry.alias(CHAMPION), registry.alias(CHALLENGER)

    def wait_serving(self, champion: str, challenger: str | None, timeout: float = 30) -> None:
        components.wait_for(lambda: all(serving(url, champion, challenger) for url in self.gateways), timeout,
                            what=f"every gateway to serve champion v{champion}, challenger {challenger}")


@pytest.fixture(scope="module")
def rig(tmp_path_factory, mlflow_server, prefect_server) -> Rig:
    workdir = tmp_path_factory.mktemp("canary")
    model = f"canary-{uuid.uuid4().hex[:8]}"
    first = register(mlflow_server.url, model, label="v1", delay_s=0.005)
    bootstrap_champion(mlflow_server.url, model, first)
    with (
        gateway(workdir, model, mlflow_server.url, "--canary-share", "0.5") as a,
        gateway(workdir, model, mlflow_server.url, "--canary-share", "0.5", "--canary-sticky", "session") as b,
        components.prometheus(workdir / "prom", [a.removeprefix("http://"), b.removeprefix("http://")]) as prom,
    ):
        r = Rig(model, mlflow_server.url, prom.url, [a, b], workdir, Load([a, b], model), [first])
        r.wait_serving(first, None, timeout=90)
        yield r
        r.load.stop()


@pytest.fixture
def memory(rig):
    from gpt_observatory import telemetry
    return telemetry.configure("canary-tests", traces_exporter=["memory"], metrics_exporter=["memory"],
                               logs_exporter=["memory"], gpu_enabled=False)


def run_canary(rig: Rig, version: str, window_s: float, **live: Any):
    from gpt_observatory.flows.canary import canary

    return canary(model_name=rig.model, version=version, prometheus_url=rig.prometheus, window_s=window_s,
                  canary_settings={**LIVE, **live}, overrides=rig.overrides())


def recorded(rig: Rig, version: str) -> Any:
    from gpt_observatory.flows import history

    return [d for d in history.read(client_for(rig.mlflow), rig.model) if d.version == version][-1]


def decisions_counted(handle: Any, decision: str) -> float:
    points = handle.memory.metrics().get(names.PIPELINE_DECISIONS.name, [])
    return sum(p.value for p in points if p.attributes.get(names.PIPELINE_DECISION) == decision)


def test_invalid_gate_settings_fail_before_any_registry_change(rig):
    from gpt_observatory.flows.canary import canary
    from gpt_observatory.telemetry import ConfigError

    with pytest.raises(ConfigError, match=r"max_error_rate.*OBSERVATORY_CANARY_MAX_ERROR_RATE"):
        canary(model_name=rig.model, version="1", canary_settings={"max_error_rate": 2}, overrides=rig.overrides())
    assert rig.aliases() == ("1", None)


def test_too_little_traffic_is_inconclusive_never_a_promotion(rig, memory):
    v2 = rig.register()
    from typer.testing import CliRunner

    from gpt_observatory.commands.pipeline import app

    pairs = {**LIVE, **rig.overrides(), "on_inconclusive": "extend", "max_extensions": 1}
    args = ["canary", "--model", rig.model, "--version", v2, "--prometheus-url", rig.prometheus, "--window", "2",
            "--step", "1", "--json"] + [a for k, v in pairs.items() for a in ("--set", f"{k}={v}")]
    trickle = Load(rig.gateways, rig.model, threads=1, pause_s=0.5).start()
    try:
        result = CliRunner().invoke(app, args)
    finally:
        trickle.stop()
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["verdict"], out["decision"]["decision"], out["windows"]) == ("inconclusive", "inconclusive", 2)
    assert "too little traffic" in out["decision"]["reason"]
    assert rig.aliases() == ("1", None)  # champion unchanged, canary ended
    record = recorded(rig, v2)
    assert record.decision == "inconclusive" and record.figures["challenger_requests"] < LIVE["min_requests"]
    assert client_for(rig.mlflow).get_model_version(rig.model, v2).tags["observatory.last_decision"] == "inconclusive"
    assert decisions_counted(memory, "inconclusive") == 1
    rig.wait_serving("1", None)


@pytest.mark.parametrize(("how", "config", "figure", "bound"), [
    ("failing", {"fail_share": 0.3}, "challenger_error_rate", LIVE["max_error_rate"]),
    ("slow", {"delay_s": 0.8}, "challenger_p95_s", LIVE["max_p95_duration_s"]),
])
def test_a_bad_challenger_is_rejected_and_its_share_drops_to_zero(rig, memory, how, config, figure, bound):
    rig.load.start()
    try:
        bad = rig.register(**config)
        out = run_canary(rig, bad, window_s=20)
        assert (out.verdict, out.decision.decision) == ("fail", "rejected"), out.decision.reason
        assert out.decision.figures[figure] > bound  # the live figures are recorded with the decision
        assert rig.aliases() == ("1", None)
        rig.wait_serving("1", None)
        after = time.monotonic()
        time.sleep(2)
        answers = rig.load.since(after)
    finally:
        rig.load.stop()
    assert answers and all(a.ok and a.label == "v1" for a in answers), answers[:5]  # share 0
    for url in rig.gateways:  # a missing challenger alias is no registry error
        assert names.MODEL_REGISTRY_ERRORS.prometheus not in httpx.get(url + "/metrics").text
    record = recorded(rig, bad)
    assert record.decision == "rejected" and record.champion == "1" and record.figures[figure] > bound
    assert decisions_counted(memory, "rejected") == 1
    spans = [s for s in memory.memory.spans() if s.name == names.SPAN_PIPELINE_DECISION]
    assert spans and spans[-1].attributes[names.PIPELINE_DECISION] == "rejected"
    from prefect.artifacts import Artifact

    artifact = Artifact.get(f"{rig.model}-decision")
    assert artifact is not None and f"rejected v{bad}" in str(artifact.data)


def test_a_good_challenger_is_promoted_without_a_failed_request(rig, memory):
    good = rig.register(fault_file=str(rig.workdir / "degrade"), fault_delay_s=0.8)
    start = time.monotonic()
    rig.load.start()
    try:
        out = run_canary(rig, good, window_s=6)
        assert (out.verdict, out.decision.decision) == ("pass", "promoted"), out.decision.reason
        rig.wait_serving(good, None)
        switched = time.monotonic()
        time.sleep(1.5)
    finally:
        rig.load.stop()
    answers = rig.load.since(start)
    failed = [a for a in answers if not a.ok]
    assert not failed, failed[:5]
    labels = [a.label for a in answers]
    assert {"v1", f"v{good}"} <= set(labels)
    assert {a.label for a in answers if a.sent > switched} == {f"v{good}"}
    assert rig.aliases() == (good, None)
    assert recorded(rig, good).decision == "promoted" and decisions_counted(memory, "promoted") == 1


def test_a_promoted_version_that_degrades_is_rolled_back_by_the_guard(rig, memory):
    from gpt_observatory.flows.canary import guard
    from gpt_observatory.flows.registry import PREVIOUS, Registry

    champion, _ = rig.aliases()
    assert champion == rig.versions[-1] and Registry(client_for(rig.mlflow), rig.model).alias(PREVIOUS) == "1"
    rig.load.start()
    try:
        with ThreadPoolExecutor(1) as pool:
            watching = in_thread(pool, guard, model_name=rig.model, version=champion, prometheus_url=rig.prometheus,
                                 duration_s=60, window_s=3, step_s=1, canary_settings=LIVE, overrides=rig.overrides())
            time.sleep(3)
            (rig.workdir / "degrade").touch()  # the champion gets 0.8 s slower per request from now
            breach = time.monotonic()
            out = watching.result(timeout=90)
            rolled_back = time.monotonic()
        rig.wait_serving("1", None)
        served_again = time.monotonic()
    finally:
        rig.load.stop()
    print(f"breach -> rollback recorded {rolled_back - breach:.1f}s, -> gateways on v1 {served_again - breach:.1f}s "
          f"(guard window 3 s, step 1 s, scrape 1 s, alias poll 0.5 s)")
    assert out.verdict == "breach" and out.decision is not None
    d = out.decision
    assert (d.decision, d.from_version, d.champion) == ("rolled_back", champion, "1")
    assert d.reason.startswith(f"rolled back from v{champion} to v1: guard: SLO breach")
    # The 0.8 s delay shows first in whichever latency the window fills first (duration or TTFT):
    # the gate the reason names must be one of them, and its figure must be over its bound.
    latency_gates = {"p95 request duration": ("champion_p95_s", "max_p95_duration_s"),
                     "p95 time to first token": ("champion_p95_ttft_s", "max_p95_ttft_s")}
    tripped = [(figure, bound) for text, (figure, bound) in latency_gates.items() if text in d.reason]
    assert tripped, d.reason
    assert all(d.figures[figure] > LIVE[bound] for figure, bound in tripped), (d.reason, d.figures)
    assert d.figures["gates"]
    assert rig.aliases() == ("1", None)
    assert recorded(rig, "1").decision == "rolled_back"
    assert decisions_counted(memory, "rolled_back") == 1
    with httpx.Client(timeout=10) as client:
        assert all(ask(client, url, rig.model).label == "v1" for url in rig.gateways)


def test_a_passed_canary_waits_for_approval_with_no_traffic_on_the_challenger(rig, memory):
    """``approval = "required"``: the canary passes, ends (the challenger alias goes, so no user is
    served the unapproved version while it waits), the run waits; ``approve`` moves the alias."""
    from tests.flows.test_approval import cli, waiting

    champion, _ = rig.aliases()
    good = rig.register()
    gated = {**rig.overrides(), "approval_models": {rig.model: "required"}, "approval_poll_s": 1,
             "approval_timeout_s": 120}
    rig.load.start()
    try:
        with ThreadPoolExecutor(1) as pool:
            judging = in_thread(pool, run_canary_gated, rig=rig, version=good, overrides=gated)
            asked = waiting(rig.model, good)
            assert rig.aliases() == (champion, None)  # the canary ended before the wait
            rig.wait_serving(champion, None)
            waited_from = time.monotonic()
            time.sleep(1.5)
            answered = cli("approve", asked.run_id, "--approver", "release-manager", "--reason", "canary looks fine")
            assert answered.exit_code == 0, answered.output
            out = judging.result(timeout=90)
    finally:
        rig.load.stop()
    d = out.decision
    assert (out.verdict, d.decision, d.champion) == ("pass", "approved", good), d.reason
    assert asked.figures["challenger_requests"] >= LIVE["min_requests"]  # the live figures, in the form
    assert rig.aliases() == (good, None)
    served = [a for a in rig.load.since(waited_from) if a.sent < waited_from + 1.5]
    assert served and {a.label for a in served} == {f"v{champion}"}, "the challenger got traffic while waiting"
    entry = recorded(rig, good)
    assert (entry.decision, entry.approver, entry.approval_reason) == ("approved", "release-manager",
                                                                       "canary looks fine")
    assert d.reason.startswith("approved by release-manager after ") and "passed live: " in d.reason
    assert decisions_counted(memory, "approved") == 1


def run_canary_gated(rig: Rig, version: str, overrides: dict[str, Any]) -> Any:
    from gpt_observatory.flows.canary import canary

    return canary(model_name=rig.model, version=version, prometheus_url=rig.prometheus, window_s=6,
                  canary_settings=LIVE, overrides=overrides)
