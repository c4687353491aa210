"""Closed loop: the ``canary`` flow judges a challenger on live traffic, the ``guard`` flow watches a
new champion and rolls it back on an SLO breach.

While the ``challenger`` alias exists, gateways started with a canary share serve it to that share
of requests (``serving_hooks.backends.canary``). ``canary`` reads both sides' live figures from
Prometheus every ``step_s`` over a growing window (:mod:`~gpt_observatory.flows.live`), judges them
(:func:`~gpt_observatory.flows.gates.judge_canary`), and at the end of the window (or at the first failed
gate, ``fail_fast``) decides, under the promotion locks, like every promotion decision (tags and
history record, Prefect artifact, span, counter):

- ``pass``: ``promoted``: champion moves to the challenger, the old one stays ``previous``; with
  ``approval = "required"`` for the model the canary ends and the flow waits for a person
  (:mod:`~gpt_observatory.flows.approval`): ``approved`` moves the alias, ``rejected_by_approver``
  and ``approval_timeout`` leave it;
- ``fail``: ``rejected`` with the live figures; the champion is untouched;
- ``inconclusive`` (too little traffic): the window is extended up to ``max_extensions`` times
  (``on_inconclusive = "extend"``), then ``inconclusive`` is recorded. Never a promotion.

With ``canary_source = "shadow"`` the figures are those of mirrored requests instead
(``serving_hooks.backends.shadow``: gateways started with ``shadow_share`` copy requests to the
challenger after the champion answered), judged by the same rules: no user is served by the
challenger, and the decision's figures add its exact-match rate and length ratio.

Every outcome deletes the ``challenger`` alias, which is what sets the canary share back to 0 in
every gateway at its next alias poll (no restart, no message to each replica). After a promotion,
``guard`` (run by ``canary`` when ``guard_duration_s`` > 0) watches the new champion; a breach of an
absolute bound on enough traffic calls the ``rollback`` flow with the figures.

Deployment entrypoints (``prefect.yaml``): ``gpt_observatory.flows.canary.canary``,
``gpt_observatory.flows.canary.guard``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from loguru import logger
from prefect import flow

from gpt_observatory.flows import approval, tasks
from gpt_observatory.flows._flowkit import call, observed
from gpt_observatory.flows.context import RunContext
from gpt_observatory.flows.decisions import champion_lock, new_decision, publish
from gpt_observatory.flows.gates import LiveResult, judge_canary, judge_guard
from gpt_observatory.flows.history import Decision, DecisionKind
from gpt_observatory.flows.instruments import PipelineInstruments, tracer
from gpt_observatory.flows.live import LiveFigures, Side
from gpt_observatory.flows.promotion import after_approval, rollback
from gpt_observatory.flows.registry import CHALLENGER, CHAMPION
from gpt_observatory.flows.settings import CanarySettings, load_canary_settings
from gpt_observatory.telemetry import names

_KIND: dict[str, DecisionKind] = {"pass": "promoted", "fail": "rejected", "inconclusive": "inconclusive"}


@dataclass(frozen=True, slots=True)
class GuardOutcome:
    """What the guard saw: ``healthy`` for its whole duration, a ``breach`` (rolled back), or
    ``stopped`` (someone else moved the champion)."""

    model: str
    version: str
    verdict: str
    reason: str
    figures: dict[str, Any]
    watched_s: float
    decision: Decision | None = None


@dataclass(frozen=True, slots=True)
class CanaryOutcome:
    """What one canary run decided (``decision`` is what was recorded)."""

    model: str
    version: str
    verdict: str  # pass | fail | inconclusive
    decision: Decision
    windows: int
    analysed_s: float
    guard: GuardOutcome | None = None
    champion: str | None = None  # after the canary (and the guard)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _start(
    model_name: str | None, overrides: dict[str, Any] | None, canary: dict[str, Any] | None, **explicit: Any
) -> RunContext:
    """A context with both settings objects, validated before anything touches the registry
    (``explicit``: the flow's own arguments, over ``canary``)."""
    given = {k: v for k, v in explicit.items() if v is not None}
    return RunContext.start(model_name, overrides, canary={**(canary or {}), **given})


def _live(context: RunContext) -> CanarySettings:
    """The run's canary settings (the configured ones, for a context made without them)."""
    return context.canary or load_canary_settings()


def _read(live: CanarySettings, name: str, window_s: float, sides: list[Side]) -> dict[Side, LiveFigures]:
    """The figures the canary judges: the users' (``live``) or the mirrored requests' (``shadow``)."""
    if live.canary_source == "shadow":
        return tasks.read_shadow(live, name, window_s, sides)
    return tasks.read_live(live, name, window_s, sides)


def _analyse(live: CanarySettings, name: str, challenger: Side, champion: Side) -> tuple[LiveResult, int, float]:
    """Look every ``step_s`` over the window so far; (result, windows used, seconds analysed)."""
    start = time.monotonic()
    deadline = start + live.window_s
    windows = 1
    while True:
        time.sleep(max(0.0, min(live.step_s, deadline - time.monotonic())))
        elapsed = time.monotonic() - start
        figures = _read(live, name, elapsed, [challenger, champion])
        result = judge_canary(figures[challenger], figures[champion], live.gates(), live.canary_source)
        done = time.monotonic() >= deadline - 1e-3
        logger.debug("canary {} v{} at {:.0f}s: {} ({})", name, challenger.version, elapsed, result.verdict,
                     result.reason)
        if result.verdict == "fail" and (live.fail_fast or done):
            return result, windows, elapsed
        if not done:
            continue
        if result.verdict == "inconclusive" and live.on_inconclusive == "extend" and windows <= live.max_extensions:
            windows += 1
            deadline += live.window_s
            logger.info("canary {} v{}: {}; extending the window ({} of {})", name, challenger.version,
                        result.reason, windows - 1, live.max_extensions)
            continue
        return result, windows, elapsed


def _conclude(
    result: LiveResult, context: RunContext, candidate: str, champion: str, instruments: PipelineInstruments
) -> Decision:
    """Record the decision under the promotion locks; every outcome ends the canary."""
    uri, name = context.tracking_uri, context.model_name
    kind, reason = _KIND[result.verdict], result.reason
    if kind == "promoted" and context.settings.approval_for(name) == "required":
        return _approve(result, context, candidate, champion, instruments)
    with champion_lock(context):
        current = call(tasks.read_alias, context, "reading the champion", uri, name, CHAMPION)
        if current != champion:
            kind = "inconclusive"
            reason = f"the champion moved from v{champion} to v{current} during the canary; nothing changed"
        if kind == "promoted":  # moves champion, keeps the old one as previous, deletes challenger
            call(tasks.move_champion, context, "moving the champion alias", uri, name, candidate, current)
        else:
            call(tasks.end_canary, context, "ending the canary", uri, name, candidate)
        decision = new_decision(kind, context, version=candidate, from_version=current,
                                champion=candidate if kind == "promoted" else current, reason=reason,
                                figures=result.figures)
        call(tasks.record_decision, context, "recording the decision", uri, decision)
    publish(decision, instruments)
    return decision


def _approve(
    result: LiveResult, context: RunContext, candidate: str, champion: str, instruments: PipelineInstruments
) -> Decision:
    """A passed canary waits for a person (``approval = "required"``). The canary ends first: no user
    is served an unapproved version (nor a mirror sent to it) for as long as the wait lasts, and the
    wait holds no lock."""
    uri, name, settings = context.tracking_uri, context.model_name, context.settings
    call(tasks.end_canary, context, "ending the canary", uri, name, candidate)
    said = approval.wait(name, candidate, champion, result.figures, settings.approval_timeout_s,
                         settings.approval_poll_s)
    with champion_lock(context):
        decision = after_approval(context, candidate, champion, result, said)
    publish(decision, instruments)
    return decision


def _abandon(context: RunContext, candidate: str) -> None:
    """No verdict (Prometheus down, interrupted): stop exposing traffic to an unjudged challenger."""
    try:
        tasks.end_canary.fn(context.tracking_uri, context.model_name, candidate)
        logger.warning("canary of {} v{} stopped without a verdict: challenger alias deleted (share 0)",
                       context.model_name, candidate)
    except Exception as e:  # keep the original failure
        logger.warning("canary of {} v{} stopped; could not delete the challenger alias: {}",
                       context.model_name, candidate, e)


@flow(name="canary")
def canary(
    model_name: str | None = None,
    version: str | None = None,
    prometheus_url: str | None = None,
    window_s: float | None = None,
    step_s: float | None = None,
    canary_settings: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> CanaryOutcome:
    """Judge ``version`` (default: the ``challenger`` alias) on live traffic against the champion;
    promote, reject or record inconclusive; then guard a promotion (``guard_duration_s`` > 0)."""
    with observed("canary") as instruments:
        context = _start(model_name, overrides, canary_settings, prometheus_url=prometheus_url, window_s=window_s,
                         step_s=step_s)
        live = _live(context)
        uri, name = context.tracking_uri, context.model_name
        champion = call(tasks.read_alias, context, "reading the champion", uri, name, CHAMPION)
        if champion is None:
            raise ValueError(f"{name} has no {CHAMPION!r}: promote a first version (observatory pipeline promote) "
                             "before running a canary against it")
        candidate = version or call(tasks.read_alias, context, "reading the challenger", uri, name, CHALLENGER)
        if candidate is None:
            raise ValueError(f"{name} has no {CHALLENGER!r} alias: register a version or pass --version")
        if candidate == champion:
            raise ValueError(f"v{candidate} already is the champion of {name}: nothing to compare")
        if version is not None:  # starts the canary: gateways load it at their next poll
            call(tasks.set_challenger, context, "setting the challenger alias", uri, name, candidate)
        logger.info("canary {}: v{} (challenger) against v{} (champion) for {:.0f}s from {} ({} figures)", name,
                    candidate, champion, live.window_s, live.prometheus_url, live.canary_source)
        attrs = {names.MODEL_NAME: name, names.PIPELINE_TO_VERSION: candidate, names.PIPELINE_FROM_VERSION: champion}
        with tracer().start_as_current_span(names.SPAN_CANARY_ANALYSIS, attributes=attrs) as span:
            try:
                result, windows, analysed = _analyse(
                    live, name, Side(candidate, names.MODEL_ROLE_CHALLENGER), Side(champion, names.MODEL_ROLE_CHAMPION)
                )
            except BaseException:
                _abandon(context, candidate)
                raise
            span.set_attributes({names.CANARY_VERDICT: result.verdict, names.PIPELINE_REASON: result.reason[:1000]})
        instruments.analysed("canary", name, result.verdict)
        result = LiveResult(result.verdict, result.reason,
                            {**result.figures, "windows": windows, "analysed_s": round(analysed, 1)})
        decision = _conclude(result, context, candidate, champion, instruments)
        logger.info("canary {} v{}: {} ({})", name, candidate, decision.decision, decision.reason)
        guarded = None
        if decision.decision == "promoted" and live.guard_duration_s > 0:
            guarded = guard(version=candidate, context=context)
        return CanaryOutcome(name, candidate, result.verdict, decision, windows, analysed, guarded,
                             guarded.decision.champion if guarded and guarded.decision else decision.champion)


@flow(name="guard")
def guard(
    model_name: str | None = None,
    version: str | None = None,
    prometheus_url: str | None = None,
    duration_s: float | None = None,
    window_s: float | None = None,
    step_s: float | None = None,
    canary_settings: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    context: RunContext | None = None,
) -> GuardOutcome:
    """Watch ``version`` (default: the champion) for ``guard_duration_s``; on an SLO breach over the
    trailing ``guard_window_s`` roll back to the previous champion, recording the figures.

    ``context``: the calling ``canary`` flow's (its settings stand in for every settings argument).
    """
    with observed("guard") as instruments:
        context = context or _start(model_name, overrides, canary_settings, prometheus_url=prometheus_url,
                                    guard_duration_s=duration_s, guard_window_s=window_s, step_s=step_s)
        live = _live(context)
        uri, name = context.tracking_uri, context.model_name
        watched = version or call(tasks.read_alias, context, "reading the champion", uri, name, CHAMPION)
        if watched is None:
            raise ValueError(f"{name} has no {CHAMPION!r} to guard")
        side = Side(watched, names.MODEL_ROLE_CHAMPION)
        start = time.monotonic()
        deadline = start + live.guard_duration_s
        outcome = GuardOutcome(name, watched, "healthy", "no traffic looked at yet", {}, 0.0)
        attrs = {names.MODEL_NAME: name, names.PIPELINE_TO_VERSION: watched}
        with tracer().start_as_current_span(names.SPAN_CANARY_ANALYSIS, attributes=attrs) as span:
            while time.monotonic() < deadline:
                time.sleep(max(0.0, min(live.step_s, deadline - time.monotonic())))
                elapsed = time.monotonic() - start
                current = call(tasks.read_alias, context, "reading the champion", uri, name, CHAMPION)
                if current != watched:
                    outcome = GuardOutcome(name, watched, "stopped", f"the champion moved to v{current}; not "
                                           f"guarding v{watched} any more", {}, elapsed)
                    break
                figures = tasks.read_live(live, name, min(elapsed, live.guard_window_s), [side])[side]
                result = judge_guard(figures, live.gates(), live.guard_min_requests)
                outcome = GuardOutcome(name, watched, result.verdict, result.reason, result.figures, elapsed)
                if result.verdict == "breach":
                    evidence = {**result.figures, "guard_window_s": live.guard_window_s, "watched_s": round(elapsed, 1)}
                    decision = rollback(reason=f"guard: {result.reason}", figures=evidence, context=context)
                    outcome = GuardOutcome(name, watched, "breach", result.reason, evidence, elapsed, decision)
                    break
            span.set_attributes({names.CANARY_VERDICT: outcome.verdict, names.PIPELINE_REASON: outcome.reason[:1000]})
        if outcome.verdict in ("healthy", "breach"):
            instruments.analysed("guard", name, outcome.verdict)
        logger.info("guard {} v{} after {:.0f}s: {} ({})", name, watched, outcome.watched_s, outcome.verdict,
                    outcome.reason)
        return outcome
