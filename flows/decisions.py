"""How the flows that move the ``champion`` alias (promote, rollback, canary) decide: under the
promotion locks, and with every decision recorded the same way.

Alias writes are last-writer-wins, so each decision holds two locks around "read champion,
decide, move, record": a Prefect global concurrency limit of 1 per model, then a lease in the
registry (:mod:`~gpt_observatory.flows.lease`). The champion is read inside the locks, so a
decision queued behind another is made against the champion that one left. The record is tags
and a history entry on the version (written by the flow, inside the locks), then a Prefect
artifact, a span and a counter (:func:`publish`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.concurrency.sync import concurrency

from gpt_observatory.flows import lease, tasks
from gpt_observatory.flows._flowkit import artifact_key, call, flow_run, holder, publish_markdown
from gpt_observatory.flows.context import RunContext
from gpt_observatory.flows.history import Decision, DecisionKind
from gpt_observatory.flows.instruments import PipelineInstruments
from gpt_observatory.flows.stores import client_for


def lock_name(model: str) -> str:
    return f"observatory-promotion-{model}"


def ensure_lock(name: str) -> None:
    """Create the global concurrency limit (limit 1) if missing; Prefect no longer creates it."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(name, 1)
        except ObjectAlreadyExists:  # a concurrent promotion created it first
            pass


@contextmanager
def champion_lock(context: RunContext) -> Iterator[None]:
    """Hold the Prefect concurrency slot and the registry lease of the model."""
    settings, uri = context.settings, context.tracking_uri
    name = lock_name(settings.model_name)
    ensure_lock(name)
    with concurrency(name, occupy=1, timeout_seconds=settings.lock_timeout_s, strict=True):
        token = call(tasks.acquire_lease, context, "taking the registry lease",
                     uri, settings.model_name, holder(), settings)
        with lease.held(client_for(uri), settings.model_name, token):
            yield


def new_decision(kind: DecisionKind, context: RunContext, **fields: Any) -> Decision:
    """A decision about the run's model, naming the flow run that made it."""
    run_id, run_name = flow_run()
    return Decision.new(decision=kind, model=context.model_name, flow_run_id=run_id, flow_run_name=run_name, **fields)


def publish(d: Decision, instruments: PipelineInstruments) -> None:
    """The decision as a Prefect artifact, a span and a counter (the registry record is written)."""
    instruments.decided(d)
    rows = "\n".join(f"| {k} | {v} |" for k, v in d.figures.items() if k != "gates")
    gates = "\n".join(f"| {k} | {v} |" for k, v in d.figures.get("gates", {}).items())
    publish_markdown(
        artifact_key(d.model, "decision"),
        f"# {d.model}: {d.decision.replace('_', ' ')} v{d.version}\n\n"
        f"- champion: v{d.from_version or '-'} → v{d.champion or '-'}\n- reason: {d.reason}\n- at: {d.at}\n\n"
        f"| figure | value |\n|---|---|\n{rows}\n\n| gate | value |\n|---|---|\n{gates}\n",
        f"{d.decision} {d.model} v{d.version}",
    )
