"""The human approval gate: a challenger that passed its gates waits for a person's yes or no.

Prefect 3 can stop a running flow for typed input. ``suspend_flow_run`` ends the process and needs a
worker to start the run again, so Prefect refuses it for a subflow (the ``pipeline``'s ``promote``)
and for a run without a deployment (``observatory pipeline promote``). The gate therefore uses
``pause_flow_run``: the run is ``Paused`` on the server (the UI shows the :class:`ApprovalInput`
form and the side-by-side figures) while this process waits, asking the API every
``approval_poll_s``. Whoever answers, the UI or :func:`answer` (``observatory pipeline approve`` /
``reject``), resumes the run with the input. No answer within ``approval_timeout_s`` counts as a
rejection. The caller holds no promotion lock while it waits (:mod:`~gpt_observatory.flows.promotion`).

Each waiting run also carries a flow-run input under :data:`PENDING_KEY` (model, versions, figures,
since), which is how :func:`pending` tells approvals from other paused runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from loguru import logger
from prefect.input import RunInput
from pydantic import Field

__all__ = ["PENDING_KEY", "Answer", "ApprovalInput", "NotPending", "Pending", "answer", "describe", "pending",
           "side_by_side", "wait"]

PENDING_KEY = "observatory-approval"
AnswerKind = Literal["approved", "rejected_by_approver", "approval_timeout"]


class ApprovalInput(RunInput):
    """A person's answer to a promotion waiting for approval."""

    approve: bool = Field(description="Move the champion alias to this version.")
    approver: str = Field(min_length=1, max_length=200, description="Who decides (recorded in the alias history).")
    reason: str = Field(min_length=1, max_length=2000, description="Why (recorded in the alias history).")


@dataclass(frozen=True, slots=True)
class Answer:
    kind: AnswerKind
    approver: str | None
    reason: str
    waited_s: float


@dataclass(frozen=True, slots=True)
class Pending:
    """A flow run waiting for approval."""

    run_id: str
    run_name: str
    model: str
    version: str
    champion: str | None
    figures: dict[str, Any]
    since: str


class NotPending(LookupError):
    """The flow run is not (or no longer) waiting for approval."""


def describe(model: str, version: str, champion: str | None, figures: dict[str, Any]) -> str:
    """Markdown for the resume form: the candidate's figures beside the champion's."""
    rows = [f"| {metric} | {mine} | {theirs} |" for metric, mine, theirs in side_by_side(figures)]
    against = f"champion v{champion}" if champion else "no champion yet"
    return (f"# Approve {model} v{version}?\n\nThe offline gates passed against {against}.\n\n"
            f"| figure | candidate v{version} | champion v{champion or '-'} |\n|---|---|---|\n"
            + "\n".join(rows) + "\n\nApprove moves the `champion` alias; reject or no answer leaves it.\n")


def side_by_side(figures: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, candidate, champion) rows from a gate result's figures."""
    rows = []
    for key in sorted(k for k in figures if k.startswith("challenger_")):
        metric = key.removeprefix("challenger_")
        rows.append((metric, _fmt(figures[key]), _fmt(figures.get(f"champion_{metric}", "-"))))
    return rows


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def wait(model: str, version: str, champion: str | None, figures: dict[str, Any], timeout_s: int,
         poll_s: int) -> Answer:
    """Pause the current flow run until a person answers or ``timeout_s`` passes."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run
    from prefect.input import create_flow_run_input

    since = datetime.now(UTC).isoformat(timespec="seconds")
    create_flow_run_input(PENDING_KEY, {"model": model, "version": version, "champion": champion,
                                        "figures": figures, "since": since})
    form = ApprovalInput.with_initial_data(description=describe(model, version, champion, figures), approve=False)
    logger.info("{} v{} waits for approval (at most {}s): observatory pipeline approve|reject RUN_ID", model,
                version, timeout_s)
    start = time.monotonic()
    try:
        given = pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=poll_s,
                               key=f"approval-{version}")
    except FlowPauseTimeout:
        _running_again()
        return Answer("approval_timeout", None, f"no answer within {timeout_s}s", time.monotonic() - start)
    kind: AnswerKind = "approved" if given.approve else "rejected_by_approver"
    return Answer(kind, given.approver, given.reason, time.monotonic() - start)


def _running_again() -> None:
    """Put a timed-out paused run back to Running, so the flow can record its decision.

    Prefect refuses every way out of a pause whose deadline has passed (it fails the run), so
    this one transition is forced.
    """
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run.id, Running(), force=True)


def pending(limit: int = 200) -> list[Pending]:
    """Flow runs waiting for approval now, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.input import read_flow_run_input

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=paused, limit=limit)
    out = []
    for run in runs:
        data = read_flow_run_input(PENDING_KEY, flow_run_id=run.id)
        if data is None:  # paused for another reason
            continue
        out.append(Pending(str(run.id), run.name, data["model"], data["version"], data.get("champion"),
                           data.get("figures", {}), data["since"]))
    return sorted(out, key=lambda p: p.since)


def answer(run_id: str, approve: bool, approver: str, reason: str) -> None:
    """Resume the waiting flow run ``run_id`` with a person's answer; raise :class:`NotPending`."""
    from prefect.exceptions import FlowPauseTimeout, NotPausedError
    from prefect.flow_runs import resume_flow_run

    given = ApprovalInput(approve=approve, approver=approver, reason=reason)  # validated here, then by the server
    waiting = {p.run_id for p in pending()}
    try:
        run = UUID(run_id)
    except ValueError:
        raise NotPending(f"{run_id!r} is not a flow run id (see: observatory pipeline pending)") from None
    if str(run) not in waiting:
        raise NotPending(f"flow run {run_id} is not waiting for approval (see: observatory pipeline pending)")
    try:
        resume_flow_run(run, run_input=given.model_dump(mode="json"))
    except (NotPausedError, FlowPauseTimeout) as e:
        raise NotPending(f"flow run {run_id} no longer waits for approval: {e}") from None
