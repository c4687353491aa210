"""The model lifecycle the demo walks through, with the project's own Prefect flows.

v1 is trained briefly and becomes the champion through the whole ``pipeline`` flow; v2 is
trained longer, registered as the ``challenger`` and evaluated offline; then it is judged: on
shadow traffic by the ``canary`` flow (issue 7), a pass waiting for approval (issue 20), or by the
offline gates of the ``promote`` flow. The flows run in this process against Prefect's local ephemeral API
(or ``PREFECT_API_URL``) and the MLflow store of the state folder (or ``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# Short trainings keep the demo within its time budget: v1 passes the absolute gates, v2 (three
# times the steps) should beat it by more than the required margin.
V1_STEPS = 40
V2_STEPS = 120
QUIET: dict[str, Any] = {"progress": False, "lease_settle_s": 0.0}  # the demo shows its own progress


@dataclass(frozen=True)
class Champion:
    version: str
    registered: bool  # False: the state folder already held it (a re-run)
    reason: str


@dataclass(frozen=True)
class Challenger:
    version: str
    registered: bool
    heldout_loss: float | None
    latency_p95_s: float | None


@dataclass(frozen=True)
class Verdict:
    decision: str  # promoted | rejected | inconclusive | unchanged | approved | rejected_by_approver | approval_timeout
    version: str
    champion: str  # after the decision
    reason: str
    judged_by: str  # JUDGED_ON_SHADOW | "offline gates (why)"
    figures: dict[str, Any] = field(default_factory=dict)  # the judged figures, as recorded with the decision
    approver: str | None = None  # the approval gate's answer, when one was asked
    waited_s: float | None = None


JUDGED_ON_SHADOW = "canary flow on shadow traffic (Prometheus)"


@contextmanager
def no_heartbeats() -> Iterator[None]:
    """Flow runs without Prefect's heartbeat thread: the demo's flows run in this one short-lived
    process, and joining that thread costs about a second per flow run."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def prepare_store(model: str) -> str:
    """Create the MLflow store now (a fresh SQLite store migrates its schema), before the gateway
    opens it too; returns its URI."""
    from gpt_observatory.flows.settings import load_settings
    from gpt_observatory.flows.stores import connect

    client = connect(load_settings(model_name=model))
    client.search_registered_models(max_results=1)
    return str(client.tracking_uri)


def start_prefect() -> Callable[[], None]:
    """Bring Prefect's API up in a thread while other things start; returns a wait that re-raises
    its error. Without ``PREFECT_API_URL`` this starts Prefect's local (ephemeral) API server,
    which later flow runs in this process reuse."""
    # Imported here, in the calling thread: two threads importing SQLAlchemy at once (MLflow's
    # store in this one, Prefect's server module in the other) can see a half-initialised module.
    from prefect.client.orchestration import get_client
    from prefect.server.api.server import SubprocessASGIServer  # noqa: F401 - what get_client starts

    errors: list[BaseException] = []

    def start() -> None:
        try:
            with get_client(sync_client=True) as client:
                client.api_healthcheck()
        except BaseException as e:  # handed to the waiting thread
            errors.append(e)

    thread = threading.Thread(target=start, name="prefect-start", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if errors:
            raise errors[0]

    return wait


def current_champion(model: str) -> str | None:
    from gpt_observatory.flows.registry import CHAMPION, Registry
    from gpt_observatory.flows.settings import load_settings
    from gpt_observatory.flows.stores import connect

    registry = Registry(connect(load_settings(model_name=model)), model)
    return registry.alias(CHAMPION) if registry.exists() else None


def first_champion(model: str) -> Champion:
    """Run the whole pipeline once for v1, unless the store already has a champion (a re-run)."""
    existing = current_champion(model)
    if existing is not None:
        return Champion(existing, False, f"the state folder already has {model} v{existing} as champion")
    from gpt_observatory.flows.pipeline import pipeline

    with no_heartbeats():
        result = pipeline(model_name=model, overrides={**QUIET, "steps": V1_STEPS})
    return Champion(result.champion or result.version, result.registered, result.reason)


def train_challenger(model: str) -> Challenger:
    """Train v2 (``V2_STEPS``), register it (``challenger``) and evaluate it offline."""
    from gpt_observatory.flows.context import RunContext
    from gpt_observatory.flows.lifecycle import evaluate, register, train
    from gpt_observatory.flows.registry import Registry
    from gpt_observatory.flows.stores import client_for

    context = RunContext.start(model, {**QUIET, "steps": V2_STEPS})  # one context for the three flows
    with no_heartbeats():
        trained = train(context=context)
        registration = register(run_id=trained.run_id, model_uri=trained.model_uri, model_id=trained.model_id,
                                lineage=trained.lineage.to_dict(), context=context)
        if registration.created:
            summary = evaluate(version=registration.version, context=context)
        else:
            summary = Registry(client_for(context.tracking_uri), model).load_eval(registration.version)
    return Challenger(registration.version, registration.created,
                      summary.heldout_loss if summary else None, summary.latency_p95_s if summary else None)


def judge_live(prometheus_url: str, challenger: Challenger) -> Verdict:
    """The ``canary`` flow (issue 7) on shadow figures while live traffic runs: the gateway mirrors
    requests to the challenger, Prometheus scrapes both sides, the flow passes (then waits for
    approval), rejects, or finds the evidence inconclusive (then the champion stays)."""
    from gpt_observatory.demo.canary import run_canary

    with no_heartbeats():
        outcome = run_canary(prometheus_url, challenger.version)
    d = outcome.decision
    return Verdict(d.decision, d.version, d.champion or outcome.champion or "", d.reason, JUDGED_ON_SHADOW,
                   d.figures, d.approver, d.waited_s)


def judge_offline(model: str, challenger: Challenger, why: str) -> Verdict:
    """The ``promote`` flow: offline gates against the champion, measured side by side."""
    from gpt_observatory.flows.promotion import promote

    with no_heartbeats():
        decision = promote(model_name=model, version=challenger.version, overrides=QUIET)
    if decision is None:
        return Verdict("unchanged", challenger.version, challenger.version,
                       f"v{challenger.version} already is the champion", "offline gates")
    return Verdict(decision.decision, decision.version, decision.champion or challenger.version, decision.reason,
                   f"offline gates ({why})")
