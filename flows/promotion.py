"""Prefect flows that move the ``champion`` alias: ``promote`` (behind the offline gates, and the
approval gate where it is required: :mod:`~gpt_observatory.flows.approval`) and ``rollback``, each
deciding under the promotion locks (:mod:`~gpt_observatory.flows.decisions`).

Deployment entrypoints (``prefect.yaml``): ``gpt_observatory.flows.promotion.promote``,
``gpt_observatory.flows.promotion.rollback``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from loguru import logger
from prefect import flow

from gpt_observatory.flows import approval, history, tasks
from gpt_observatory.flows._flowkit import call, in_process_subflows, observed
from gpt_observatory.flows.context import RunContext
from gpt_observatory.flows.decisions import champion_lock, new_decision, publish
from gpt_observatory.flows.gates import EvalSummary, GateResult, LiveResult, judge
from gpt_observatory.flows.history import MOVES_CHAMPION, Decision, DecisionKind
from gpt_observatory.flows.lifecycle import evaluate
from gpt_observatory.flows.registry import CHALLENGER, CHAMPION


def _eval_of(context: RunContext, version: str) -> EvalSummary:
    """Stored figures when they come from the current evaluation set, else a fresh evaluation."""
    stored = call(tasks.read_eval, context, f"reading the evaluation of v{version}",
                  context.tracking_uri, context.model_name, version)
    if stored is not None and stored.eval_data == context.eval_data:
        return stored
    with in_process_subflows():
        return evaluate(version=version, context=context)


def _side_by_side(
    context: RunContext, candidate: str, champion: str, challenger: EvalSummary, incumbent: EvalSummary
) -> tuple[EvalSummary, EvalSummary]:
    """Both summaries with latency re-measured together, so the regression gate compares like with like."""
    (c50, c95), (i50, i95) = call(tasks.compare_latency, context, "measuring latency side by side",
                                  context.tracking_uri, context.model_name, [candidate, champion], context.settings)
    return (dataclasses.replace(challenger, latency_p50_s=c50, latency_p95_s=c95),
            dataclasses.replace(incumbent, latency_p50_s=i50, latency_p95_s=i95))


@flow(name="promote")
def promote(
    model_name: str | None = None,
    version: str | None = None,
    overrides: dict[str, Any] | None = None,
    context: RunContext | None = None,
) -> Decision | None:
    """Judge ``version`` (default: the ``challenger``) against the champion and move the alias if it passes
    (and, with ``approval = "required"`` for the model, once a person approves).

    Returns the recorded decision, or None when the version already is the champion.
    ``context``: the calling flow's (it stands in for ``model_name`` and ``overrides``).
    """
    with observed("promote") as instruments:
        context = context or RunContext.start(model_name, overrides)
        settings, uri, name = context.settings, context.tracking_uri, context.model_name
        candidate = version or call(tasks.read_alias, context, "reading the challenger", uri, name, CHALLENGER)
        if candidate is None:
            raise ValueError(f"{name} has no {CHALLENGER!r} alias: register a version first or pass a version")
        with champion_lock(context):
            champion = call(tasks.read_alias, context, "reading the champion", uri, name, CHAMPION)
            if champion == candidate:
                logger.info("{} v{} already is the champion", name, candidate)
                return None
            result = _judge(context, candidate, champion)
            gated = result.passed and settings.approval_for(name) == "required"
            if not gated:
                decision = _decide("promoted" if result.passed else "rejected", context, candidate, champion,
                                   result.reason, result.figures)
        if gated:
            # Waiting holds neither lock: other promotions and rollbacks go ahead meanwhile.
            said = approval.wait(name, candidate, champion, result.figures, settings.approval_timeout_s,
                                 settings.approval_poll_s)
            with champion_lock(context):
                decision = after_approval(context, candidate, champion, result, said)
        publish(decision, instruments)
        logger.info("{} v{}: {} ({})", name, candidate, decision.decision, decision.reason)
        return decision


def _judge(context: RunContext, candidate: str, champion: str | None) -> GateResult:
    challenger_eval = _eval_of(context, candidate)
    champion_eval = _eval_of(context, champion) if champion else None
    if champion_eval is not None:
        challenger_eval, champion_eval = _side_by_side(context, candidate, champion, challenger_eval, champion_eval)
    return judge(challenger_eval, champion_eval, context.settings.gates())


def _decide(kind: DecisionKind, context: RunContext, candidate: str, champion: str | None, reason: str,
            figures: dict[str, Any], **approval_fields: Any) -> Decision:
    """Move the alias when ``kind`` says so and record the decision (inside the locks)."""
    uri, name = context.tracking_uri, context.model_name
    moves = kind in MOVES_CHAMPION
    if moves:
        call(tasks.move_champion, context, "moving the champion alias", uri, name, candidate, champion)
    decision = new_decision(kind, context, version=candidate, from_version=champion,
                            champion=candidate if moves else champion, reason=reason, figures=figures,
                            **approval_fields)
    call(tasks.record_decision, context, "recording the decision", uri, decision)
    return decision


def after_approval(
    context: RunContext, candidate: str, judged_against: str | None, result: GateResult | LiveResult,
    said: approval.Answer,
) -> Decision:
    """The approver's answer, applied to the champion as it is now (call it inside the locks: it
    re-reads the champion); for the ``promote`` flow's gates and the ``canary`` flow's verdict."""
    uri, name = context.tracking_uri, context.model_name
    champion = call(tasks.read_alias, context, "reading the champion", uri, name, CHAMPION)
    fields = {"approver": said.approver, "approval_reason": said.reason, "waited_s": round(said.waited_s, 3)}
    who = f" by {said.approver}" if said.approver else ""
    if said.kind == "approved" and champion != judged_against:
        why = (f"approved{who}, but the champion moved from v{judged_against or '-'} to v{champion or '-'} "
               f"while waiting: the figures are stale, promote again")
        return _decide("rejected", context, candidate, champion, why, result.figures, **fields)
    words = {"approved": "approved", "rejected_by_approver": "rejected", "approval_timeout": "not approved"}
    why = f"{words[said.kind]}{who} after {said.waited_s:.0f}s: {said.reason}; gates {result.reason}"
    return _decide(said.kind, context, candidate, champion, why, result.figures, **fields)


@flow(name="rollback")
def rollback(
    model_name: str | None = None,
    to_version: str | None = None,
    reason: str | None = None,
    overrides: dict[str, Any] | None = None,
    figures: dict[str, Any] | None = None,
    context: RunContext | None = None,
) -> Decision:
    """Point ``champion`` back at the previous champion (or ``to_version``) and record it
    (``figures``: the evidence, e.g. the canary guard's live figures; ``context``: the calling
    flow's, standing in for ``model_name`` and ``overrides``)."""
    with observed("rollback") as instruments:
        context = context or RunContext.start(model_name, overrides)
        uri, name = context.tracking_uri, context.model_name
        with champion_lock(context):
            champion = call(tasks.read_alias, context, "reading the champion", uri, name, CHAMPION)
            past = call(tasks.read_history, context, "reading the decision history", uri, name)
            target = to_version or history.previous_champion(past, champion)
            if target is None or target == champion:
                raise ValueError(f"nothing to roll back to: {name} has no earlier champion than v{champion} "
                                 f"in its decision history (pass a version to choose one)")
            why = f"rolled back from v{champion} to v{target}" + (f": {reason}" if reason else "")
            decision = new_decision("rolled_back", context, version=target, from_version=champion, champion=target,
                                    reason=why, figures=figures or {})
            after = history.previous_champion([*past, decision], target)
            call(tasks.move_champion, context, "moving the champion alias", uri, name, target, after)
            call(tasks.record_decision, context, "recording the decision", uri, decision)
        publish(decision, instruments)
        logger.info("{}: {}", name, why)
        return decision
