"""Closed loop: the ``canary`` flow judges a challenger on live traffic, the ``guard`` flow watches a
new champion and rolls it back on an SLO breach.

While the ``challenger`` alias exists, gateways started with a canary share serve it to that share
of requests (``serving_hooks.backends.canary``). ``canary`` reads both sides' live figures from
Prometheus every ``step_s`` over a growing window (:mod:`flows.live`), judges them
(:func:`flows.canary_gates.judge_canary`), and at the end of the window (or at the first failed
gate, ``fail_fast``) decides, under the promotion locks, like every promotion decision (tags and
history record, Prefect artifact, span, counter):

- ``pass``: ``promoted``: champion moves to the challenger, the old one stays ``previous``;
- ``fail``: ``rejected`` with the live figures; the champion is untouched;
- ``inconclusive`` (too little traffic): the window is extended up to ``max_extensions`` times
  (``on_inconclusive = "extend"``), then ``inconclusive`` is recorded. Never a promotion.

Every outcome deletes the ``challenger`` alias, which is what sets the canary share back to 0 in
every gateway at its next alias poll (no restart, no message to each replica). After a promotion,
``guard`` (run by ``canary`` when ``guard_duration_s`` > 0) watches the new champion; a breach of an
absolute bound on enough traffic calls the ``rollback`` flow with the figures.

Deployment entrypoints (``prefect.yaml``): ``flows/canary.py:canary``, ``flows/canary.py:guard``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from loguru import logger
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from gpt_observatory.flows import tasks
from gpt_observatory.flows._flowkit import call, observed, settings_for
from gpt_observatory.flows.canary_gates import LiveResult, judge_canary, judge_guard
from gpt_observatory.flows.canary_settings import CanarySettings, load_canary_settings
from gpt_observatory.flows.errors import retry_transient
from gpt_observatory.flows.history import Decision
from gpt_observatory.flows.instruments import PipelineInstruments, tracer
from gpt_observatory.flows.live import LiveFigures, LiveQueries, Prometheus, PrometheusError, Side
from gpt_observatory.flows.promotion import _decision, _publish, champion_lock, rollback
from gpt_observatory.flows.registry import CHALLENGER, CHAMPION, Registry
from gpt_observatory.flows.settings import PipelineSettings
from gpt_observatory.flows.stores import client_for, connect
from gpt_observatory.telemetry import names

_MLFLOW = {"retry_condition_fn": retry_transient, "cache_policy": NO_CACHE, "retries": 3, "retry_delay_seconds": 2}
_KIND = {"pass": "promoted", "fail": "rejected", "inconclusive": "inconclusive"}


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


# ------------------------------------------------------------------ tasks
@task(name="read-live-figures", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1,
      retry_condition_fn=lambda task, run, state: _is_prometheus_error(state))
def read_live(live: CanarySettings, model: str, window_s: float, sides: list[Side]) -> dict[Side, LiveFigures]:
    queries = LiveQueries(Prometheus(live.prometheus_url, live.query_timeout_s), model, live.selector)
    return queries.figures(window_s, sides)


def _is_prometheus_error(state: Any) -> bool:
    try:
        state.result(raise_on_failure=True)
    except PrometheusError:
        return True
    except BaseException:  # anything else is not worth a retry
        return False
    return False


@task(name="set-challenger", **_MLFLOW)
def set_challenger(uri: str, name: str, version: str) -> None:
    Registry(client_for(uri), name).set_alias(CHALLENGER, version)


@task(name="end-canary", **_MLFLOW)
def end_canary(uri: str, name: str, version: str) -> None:
    """Delete the ``challenger`` alias if it still names ``version``: gateways route it nothing."""
    Registry(client_for(uri), name).clear_alias(CHALLENGER, only_if=version)


# ------------------------------------------------------------------ flows
def _settings(
    model_name: str | None, overrides: dict[str, Any] | None, canary: dict[str, Any] | None, **explicit: Any
) -> tuple[PipelineSettings, CanarySettings]:
    """Both settings objects, validated before anything touches the registry."""
    given = {k: v for k, v in explicit.items() if v is not None}
    return settings_for(model_name, overrides), load_canary_settings(**{**(canary or {}), **given})


def _analyse(live: CanarySettings, name: str, challenger: Side, champion: Side) -> tuple[LiveResult, int, float]:
    """Look every ``step_s`` over the window so far; (result, windows used, seconds analysed)."""
    start = time.monotonic()
    deadline = start + live.window_s
    windows = 1
    while True:
        time.sleep(max(0.0, min(live.step_s, deadline - time.monotonic())))
        elapsed = time.monotonic() - start
        figures = read_live(live, name, elapsed, [challenger, champion])
        result = judge_canary(figures[challenger], figures[champion], live.gates())
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
    result: LiveResult, settings: PipelineSettings, uri: str, candidate: str, champion: str,
    instruments: PipelineInstruments,
) -> Decision:
    """Record the decision under the promotion locks; every outcome ends the canary."""
    name = settings.model_name
    kind, reason = _KIND[result.verdict], result.reason
    with champion_lock(settings, uri):
        current = call(tasks.read_alias, settings, uri, "reading the champion", uri, name, CHAMPION)
        if current != champion:
            kind = "inconclusive"
            reason = f"the champion moved from v{champion} to v{current} during the canary; nothing changed"
        if kind == "promoted":  # moves champion, keeps the old one as previous, deletes challenger
            call(tasks.move_champion, settings, uri, "moving the champion alias", uri, name, candidate, current)
        else:
            call(end_canary, settings, uri, "ending the canary", uri, name, candidate)
        decision = _decision(kind, settings, version=candidate, from_version=current,
                             champion=candidate if kind == "promoted" else current, reason=reason,
                             figures=result.figures)
        call(tasks.record_decision, settings, uri, "recording the decision", uri, decision)
    _publish(decision, instruments)
    return decision


def _abandon(settings: PipelineSettings, uri: str, candidate: str) -> None:
    """No verdict (Prometheus down, interrupted): stop exposing traffic to an unjudged challenger."""
    try:
        end_canary.fn(uri, settings.model_name, candidate)
        logger.warning("canary of {} v{} stopped without a verdict: challenger alias deleted (share 0)",
                       settings.model_name, candidate)
    except Exception as e:  # keep the original failure
        logger.warning("canary of {} v{} stopped; could not delete the challenger alias: {}",
                       settings.model_name, candidate, e)


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
        settings, live = _settings(model_name, overrides, canary_settings, prometheus_url=prometheus_url,
                                   window_s=window_s, step_s=step_s)
        uri = connect(settings).tracking_uri
        name = settings.model_name
        champion = call(tasks.read_alias, settings, uri, "reading the champion", uri, name, CHAMPION)
        if champion is None:
            raise ValueError(f"{name} has no {CHAMPION!r}: promote a first version (observatory pipeline promote) "
                             "before running a canary against it")
        candidate = version or call(tasks.read_alias, settings, uri, "reading the challenger", uri, name, CHALLENGER)
        if candidate is None:
            raise ValueError(f"{name} has no {CHALLENGER!r} alias: register a version or pass --version")
        if candidate == champion:
            raise ValueError(f"v{candidate} already is the champion of {name}: nothing to compare")
        if version is not None:  # starts the canary: gateways load it at their next poll
            call(set_challenger, settings, uri, "setting the challenger alias", uri, name, candidate)
        logger.info("canary {}: v{} (challenger) against v{} (champion) for {:.0f}s from {}", name, candidate,
                    champion, live.window_s, live.prometheus_url)
        attrs = {names.MODEL_NAME: name, names.PIPELINE_TO_VERSION: candidate, names.PIPELINE_FROM_VERSION: champion}
        with tracer().start_as_current_span(names.SPAN_CANARY_ANALYSIS, attributes=attrs) as span:
            try:
                result, windows, analysed = _analyse(
                    live, name, Side(candidate, names.MODEL_ROLE_CHALLENGER), Side(champion, names.MODEL_ROLE_CHAMPION)
                )
            except BaseException:
                _abandon(settings, uri, candidate)
                raise
            span.set_attributes({names.CANARY_VERDICT: result.verdict, names.PIPELINE_REASON: result.reason[:1000]})
        instruments.analysed("canary", name, result.verdict)
        result = LiveResult(result.verdict, result.reason,
                            {**result.figures, "windows": windows, "analysed_s": round(analysed, 1)})
        decision = _conclude(result, settings, uri, candidate, champion, instruments)
        logger.info("canary {} v{}: {} ({})", name, candidate, decision.decision, decision.reason)
        guarded = None
        if decision.decision == "promoted" and live.guard_duration_s > 0:
            guarded = guard(model_name=name, version=candidate, canary_settings=live.model_dump(), overrides=overrides)
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
) -> GuardOutcome:
    """Watch ``version`` (default: the champion) for ``guard_duration_s``; on an SLO breach over the
    trailing ``guard_window_s`` roll back to the previous champion, recording the figures."""
    with observed("guard") as instruments:
        settings, live = _settings(model_name, overrides, canary_settings, prometheus_url=prometheus_url,
                                   guard_duration_s=duration_s, guard_window_s=window_s, step_s=step_s)
        uri = connect(settings).tracking_uri
        name = settings.model_name
        watched = version or call(tasks.read_alias, settings, uri, "reading the champion", uri, name, CHAMPION)
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
                current = call(tasks.read_alias, settings, uri, "reading the champion", uri, name, CHAMPION)
                if current != watched:
                    outcome = GuardOutcome(name, watched, "stopped", f"the champion moved to v{current}; not "
                                           f"guarding v{watched} any more", {}, elapsed)
                    break
                figures = read_live(live, name, min(elapsed, live.guard_window_s), [side])[side]
                result = judge_guard(figures, live.gates(), live.guard_min_requests)
                outcome = GuardOutcome(name, watched, result.verdict, result.reason, result.figures, elapsed)
                if result.verdict == "breach":
                    evidence = {**result.figures, "guard_window_s": live.guard_window_s, "watched_s": round(elapsed, 1)}
                    decision = rollback(model_name=name, reason=f"guard: {result.reason}", overrides=overrides,
                                        figures=evidence)
                    outcome = GuardOutcome(name, watched, "breach", result.reason, evidence, elapsed, decision)
                    break
            span.set_attributes({names.CANARY_VERDICT: outcome.verdict, names.PIPELINE_REASON: outcome.reason[:1000]})
        if outcome.verdict in ("healthy", "breach"):
            instruments.analysed("guard", name, outcome.verdict)
        logger.info("guard {} v{} after {:.0f}s: {} ({})", name, watched, outcome.watched_s, outcome.verdict,
                    outcome.reason)
        return outcome
