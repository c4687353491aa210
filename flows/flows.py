"""The Prefect flows of the model lifecycle, and ``pipeline`` composing them.

Deployment entrypoints (``prefect.yaml``): ``flows/flows.py:pipeline``, ``flows/flows.py:promote``,
``flows/flows.py:rollback``.

    train ─► register ─► evaluate ─► promote        rollback
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from loguru import logger
from prefect import flow

from gpt_observatory.flows import tasks
from gpt_observatory.flows._flowkit import call, in_process_subflows, lineage_for, observed, settings_for
from gpt_observatory.flows.model_flows import evaluate, register, train
from gpt_observatory.flows.promotion import promote, rollback
from gpt_observatory.flows.registry import CHAMPION
from gpt_observatory.flows.stores import connect

__all__ = ["PipelineResult", "evaluate", "pipeline", "promote", "register", "rollback", "train"]


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """What one pipeline run did."""

    model: str
    version: str
    registered: bool  # False: the same data, code and params were already registered
    decision: str | None  # promoted | rejected | None (the version already was the champion)
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
        settings = settings_for(model_name, overrides)  # invalid settings stop here, before the registry
        name = settings.model_name
        uri = connect(settings).tracking_uri
        lineage = lineage_for(settings)
        version = call(tasks.find_version, settings, uri, "looking up the fingerprint", uri, name, lineage.fingerprint)
        registered = False
        with in_process_subflows():
            if version is None:
                trained = train(model_name=name, overrides=overrides)
                registration = register(run_id=trained.run_id, model_uri=trained.model_uri,
                                        model_id=trained.model_id, lineage=trained.lineage.to_dict(),
                                        model_name=name, overrides=overrides)
                version, registered = registration.version, registration.created
                if registered:
                    evaluate(version=version, model_name=name, overrides=overrides)
            else:
                logger.info("{} v{} already holds fingerprint {}: skipping training", name, version,
                            lineage.fingerprint)
            decision = promote(model_name=name, version=version, overrides=overrides)
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
