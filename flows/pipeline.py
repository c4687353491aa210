"""The ``pipeline`` flow: the model lifecycle once, as subflows of one run.

    train ─► register ─► evaluate ─► promote        (lifecycle.py, then promotion.py)

Settings are validated, the store connected and the corpus read and hashed once, in the
:class:`~gpt_observatory.flows.context.RunContext` that every subflow takes.

Deployment entrypoint (``prefect.yaml``): ``gpt_observatory.flows.pipeline.pipeline``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from loguru import logger
from prefect import flow

from gpt_observatory.flows import tasks
from gpt_observatory.flows._flowkit import call, in_process_subflows, observed
from gpt_observatory.flows.context import RunContext
from gpt_observatory.flows.lifecycle import evaluate, register, train
from gpt_observatory.flows.promotion import promote
from gpt_observatory.flows.registry import CHAMPION

__all__ = ["PipelineResult", "pipeline"]


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """What one pipeline run did."""

    model: str
    version: str
    registered: bool  # False: the same data, code and params were already registered
    decision: str | None  # promoted | rejected | approved | rejected_by_approver | approval_timeout | None (already champion)
    reason: str
    champion: str | None
    tracking_uri: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@flow(name="pipeline")
def pipeline(model_name: str | None = None, overrides: dict[str, Any] | None = None) -> PipelineResult:
    """Train, register, evaluate and promote once; a re-run with the same data, code and params
    trains and registers nothing and only re-decides a version that is not yet the champion."""
    with observed("pipeline"):
        context = RunContext.start(model_name, overrides)  # invalid settings stop here, before the registry
        name, uri = context.model_name, context.tracking_uri
        fingerprint = context.lineage.fingerprint
        version = call(tasks.find_version, context, "looking up the fingerprint", uri, name, fingerprint)
        registered = False
        with in_process_subflows():
            if version is None:
                trained = train(context=context)
                registration = register(run_id=trained.run_id, model_uri=trained.model_uri,
                                        model_id=trained.model_id, lineage=trained.lineage.to_dict(),
                                        context=context)
                version, registered = registration.version, registration.created
                if registered:
                    evaluate(version=version, context=context)
            else:
                logger.info("{} v{} already holds fingerprint {}: skipping training", name, version, fingerprint)
            decision = promote(version=version, context=context)
        champion = decision.champion if decision else version
        result = PipelineResult(
            model=name,
            version=version,
            registered=registered,
            decision=decision.decision if decision else None,
            reason=decision.reason if decision else f"v{version} already is the {CHAMPION}",
            champion=champion,
            tracking_uri=uri,
        )
        logger.info("pipeline {}: v{} {} ({})", name, version, result.decision or "unchanged", result.reason)
        return result
