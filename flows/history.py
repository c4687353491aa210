"""Promotion decisions, kept in the registry itself so any MLflow client can read the history.

MLflow keeps no alias history. Each decision is one JSON tag on the model version it is about
(``observatory.decision.<seq>``; ``seq`` sorts by time and is unique, so concurrent writers
never overwrite each other), plus ``observatory.last_decision*`` tags for the MLflow UI.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

# inconclusive: canary only; approved (moves champion), rejected_by_approver, approval_timeout: the approval gate
DecisionKind = Literal["promoted", "rejected", "rolled_back", "inconclusive", "approved", "rejected_by_approver",
                       "approval_timeout"]
MOVES_CHAMPION: tuple[DecisionKind, ...] = ("promoted", "approved")
DECISION_TAG_PREFIX = "observatory.decision."
LAST_DECISION_TAG = "observatory.last_decision"
LAST_REASON_TAG = "observatory.last_decision_reason"


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision about the ``champion`` alias of a registered model."""

    decision: DecisionKind
    model: str
    version: str  # the version decided about: the challenger, or the rollback target
    from_version: str | None  # champion before the decision
    champion: str | None  # champion after the decision
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    at: str = ""
    seq: str = ""
    approver: str | None = None  # the approval gate's decisions: who answered, why, after how long
    approval_reason: str | None = None
    waited_s: float | None = None

    @classmethod
    def new(cls, **fields: Any) -> Decision:
        now = time.time_ns()
        at = datetime.fromtimestamp(now / 1e9, UTC).isoformat(timespec="milliseconds")
        return cls(**fields, at=at, seq=f"{now:020d}-{uuid.uuid4().hex[:8]}")

    @property
    def tag_key(self) -> str:
        return DECISION_TAG_PREFIX + self.seq

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, text: str) -> Decision:
        return cls(**json.loads(text))


def record(client: MlflowClient, decision: Decision) -> None:
    """Write ``decision`` onto its model version."""
    client.set_model_version_tag(decision.model, decision.version, decision.tag_key, decision.to_json())
    client.set_model_version_tag(decision.model, decision.version, LAST_DECISION_TAG, decision.decision)
    client.set_model_version_tag(decision.model, decision.version, LAST_REASON_TAG, decision.reason[:4000])


def all_versions(client: MlflowClient, model: str) -> list[ModelVersion]:
    """Every version of ``model`` (``aliases`` are empty here: search does not fill them)."""
    out: list[ModelVersion] = []
    token = None
    escaped = model.replace("'", "\\'")
    while True:
        page = client.search_model_versions(f"name='{escaped}'", max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def decisions_of(versions: Iterable[ModelVersion]) -> list[Decision]:
    found = [
        Decision.from_json(value)
        for mv in versions
        for key, value in (mv.tags or {}).items()
        if key.startswith(DECISION_TAG_PREFIX)
    ]
    return sorted(found, key=lambda d: d.seq)


def read(client: MlflowClient, model: str) -> list[Decision]:
    """All decisions about ``model``, oldest first."""
    return decisions_of(all_versions(client, model))


def champion_line(decisions: Iterable[Decision]) -> list[str]:
    """Versions that held ``champion``, oldest first, with rolled-back ones taken off."""
    line: list[str] = []
    for d in decisions:
        if d.decision in MOVES_CHAMPION:
            line.append(d.version)
        elif d.decision == "rolled_back":
            if line and line[-1] == d.from_version:
                line.pop()
            if not line or line[-1] != d.version:
                line.append(d.version)
    return line


def previous_champion(decisions: Iterable[Decision], current: str | None) -> str | None:
    """The version a rollback from ``current`` restores: the last champion before it."""
    line = champion_line(decisions)
    while line and line[-1] == current:
        line.pop()
    return line[-1] if line else None
