"""Prefect flows that move the ``champion`` alias: ``promote`` (behind gates) and ``rollback``.

Alias writes are last-writer-wins, so each flow holds two locks around "read champion, decide,
move, record": a Prefect global concurrency limit of 1 per model, then a lease in the registry
(:mod:`flows.lease`). The champion is read inside the locks, so a promotion queued behind
another is judged against the champion that one left.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loguru import logger
from prefect import flow
from prefect.concurrency.sync import concurrency

from gpt_observatory.flows import history, lease, tasks
from gpt_observatory.flows._flowkit import (
    artifact_key,
    call,
    flow_run,
    holder,
    in_process_subflows,
    observed,
    publish_markdown,
    settings_for,
)
from gpt_observatory.flows.evaluation import eval_data_id, golden_prompts
from gpt_observatory.flows.gates import EvalSummary, judge
from gpt_observatory.flows.history import Decision
from gpt_observatory.flows.instruments import PipelineInstruments
from gpt_observatory.flows.model_flows import evaluate
from gpt_observatory.flows.registry import CHALLENGER, CHAMPION
from gpt_observatory.flows.settings import PipelineSettings
from gpt_observatory.flows.stores import client_for, connect
from gpt_observatory.flows.training import load_corpus


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
def champion_lock(settings: PipelineSettings, uri: str) -> Iterator[None]:
    """Hold the Prefect concurrency slot and the registry lease of the model."""
    name = lock_name(settings.model_name)
    ensure_lock(name)
    with concurrency(name, occupy=1, timeout_seconds=settings.lock_timeout_s, strict=True):
        token = call(tasks.acquire_lease, settings, uri, "taking the registry lease",
                     uri, settings.model_name, holder(), settings)
        try:
            yield
        finally:
            try:
                lease.release(client_for(uri), settings.model_name, token)
            except Exception as e:  # it expires after lease_ttl_s; keep the body's own outcome
                logger.warning("registry lease on {} not released ({}); it expires by itself", settings.model_name, e)


def _eval_of(settings: PipelineSettings, uri: str, version: str, overrides: dict[str, Any] | None) -> EvalSummary:
    """Stored figures when they come from the current evaluation set, else a fresh evaluation."""
    expected = eval_data_id(load_corpus(heldout_fraction=settings.heldout_fraction), settings.heldout_fraction,
                            golden_prompts())
    stored = call(tasks.read_eval, settings, uri, f"reading the evaluation of v{version}",
                  uri, settings.model_name, version)
    if stored is not None and stored.eval_data == expected:
        return stored
    with in_process_subflows():
        return evaluate(version=version, model_name=settings.model_name, overrides=overrides)


def _side_by_side(
    settings: PipelineSettings, uri: str, candidate: str, champion: str, challenger: EvalSummary, incumbent: EvalSummary
) -> tuple[EvalSummary, EvalSummary]:
    """Both summaries with latency re-measured together, so the regression gate compares like with like."""
    (c50, c95), (i50, i95) = call(tasks.compare_latency, settings, uri, "measuring latency side by side",
                                  uri, settings.model_name, [candidate, champion], settings)
    return (dataclasses.replace(challenger, latency_p50_s=c50, latency_p95_s=c95),
            dataclasses.replace(incumbent, latency_p50_s=i50, latency_p95_s=i95))


def _publish(d: Decision, instruments: PipelineInstruments) -> None:
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


def _decision(kind: str, settings: PipelineSettings, **fields: Any) -> Decision:
    run_id, run_name = flow_run()
    return Decision.new(decision=kind, model=settings.model_name, flow_run_id=run_id, flow_run_name=run_name, **fields)


@flow(name="promote")
def promote(
    model_name: str | None = None, version: str | None = None, overrides: dict[str, Any] | None = None
) -> Decision | None:
    """Judge ``version`` (default: the ``challenger``) against the champion and move the alias if it passes.

    Returns the recorded decision, or None when the version already is the champion.
    """
    with observed("promote") as instruments:
        settings = settings_for(model_name, overrides)
        uri = connect(settings).tracking_uri
        name = settings.model_name
        candidate = version or call(tasks.read_alias, settings, uri, "reading the challenger", uri, name, CHALLENGER)
        if candidate is None:
            raise ValueError(f"{name} has no {CHALLENGER!r} alias: register a version first or pass a version")
        with champion_lock(settings, uri):
            champion = call(tasks.read_alias, settings, uri, "reading the champion", uri, name, CHAMPION)
            if champion == candidate:
                logger.info("{} v{} already is the champion", name, candidate)
                return None
            challenger_eval = _eval_of(settings, uri, candidate, overrides)
            champion_eval = _eval_of(settings, uri, champion, overrides) if champion else None
            if champion_eval is not None:
                challenger_eval, champion_eval = _side_by_side(settings, uri, candidate, champion,
                                                               challenger_eval, champion_eval)
            result = judge(challenger_eval, champion_eval, settings.gates())
            if result.passed:
                call(tasks.move_champion, settings, uri, "moving the champion alias", uri, name, candidate, champion)
            decision = _decision(
                "promoted" if result.passed else "rejected", settings, version=candidate, from_version=champion,
                champion=candidate if result.passed else champion, reason=result.reason, figures=result.figures,
            )
            call(tasks.record_decision, settings, uri, "recording the decision", uri, decision)
        _publish(decision, instruments)
        logger.info("{} v{}: {} ({})", name, candidate, decision.decision, decision.reason)
        return decision


@flow(name="rollback")
def rollback(
    model_name: str | None = None,
    to_version: str | None = None,
    reason: str | None = None,
    overrides: dict[str, Any] | None = None,
    figures: dict[str, Any] | None = None,
) -> Decision:
    """Point ``champion`` back at the previous champion (or ``to_version``) and record it
    (``figures``: the evidence, e.g. the canary guard's live figures)."""
    with observed("rollback") as instruments:
        settings = settings_for(model_name, overrides)
        uri = connect(settings).tracking_uri
        name = settings.model_name
        with champion_lock(settings, uri):
            champion = call(tasks.read_alias, settings, uri, "reading the champion", uri, name, CHAMPION)
            past = call(tasks.read_history, settings, uri, "reading the decision history", uri, name)
            target = to_version or history.previous_champion(past, champion)
            if target is None or target == champion:
                raise ValueError(f"nothing to roll back to: {name} has no earlier champion than v{champion} "
                                 f"in its decision history (pass a version to choose one)")
            why = f"rolled back from v{champion} to v{target}" + (f": {reason}" if reason else "")
            decision = _decision("rolled_back", settings, version=target, from_version=champion, champion=target,
                                 reason=why, figures=figures or {})
            after = history.previous_champion([*past, decision], target)
            call(tasks.move_champion, settings, uri, "moving the champion alias", uri, name, target, after)
            call(tasks.record_decision, settings, uri, "recording the decision", uri, decision)
        _publish(decision, instruments)
        logger.info("{}: {}", name, why)
        return decision
