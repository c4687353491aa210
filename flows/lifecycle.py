"""Prefect flows that make and measure a model version: ``train``, ``register``, ``evaluate``.

Each takes the calling flow's :class:`~gpt_observatory.flows.context.RunContext` as ``context``
(the ``pipeline`` flow passes its own), or makes one from ``model_name`` and ``overrides``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loguru import logger
from prefect import flow

from gpt_observatory.flows import tasks
from gpt_observatory.flows._flowkit import artifact_key, call, observed, publish_table
from gpt_observatory.flows.context import RunContext
from gpt_observatory.flows.gates import EvalSummary
from gpt_observatory.flows.lineage import Lineage
from gpt_observatory.flows.registry import Registration


@dataclass(frozen=True, slots=True)
class TrainOutput:
    run_id: str
    model_uri: str
    model_id: str | None
    lineage: Lineage
    train_loss: float
    heldout_loss: float
    duration_s: float


@flow(name="train")
def train(
    model_name: str | None = None, overrides: dict[str, Any] | None = None, context: RunContext | None = None
) -> TrainOutput:
    """Train the reference model and log it, with its metrics, as a pyfunc in an MLflow run."""
    with observed("train") as instruments:
        context = context or RunContext.start(model_name, overrides)
        settings, uri, name = context.settings, context.tracking_uri, context.model_name
        experiment = call(tasks.ensure_experiment, context, "creating the experiment", uri, settings.experiment)
        lineage = context.lineage
        result = tasks.fit(settings.train_params(), context.corpus, settings.progress, settings.torch_threads)
        logger.info("trained {} in {:.1f}s: held-out loss {:.4f}", name, result.duration_s, result.heldout_loss)
        run_id = call(tasks.start_training_run, context, "creating the training run", uri, experiment, lineage, name)
        model_uri, model_id = call(tasks.log_trained_model, context, "logging the model", uri, run_id, result)
        instruments.trained(name, result.duration_s)
        return TrainOutput(run_id, model_uri, model_id, lineage, result.train_loss, result.heldout_loss,
                           result.duration_s)


@flow(name="register")
def register(
    run_id: str,
    model_uri: str,
    lineage: dict[str, Any],
    model_id: str | None = None,
    model_name: str | None = None,
    overrides: dict[str, Any] | None = None,
    context: RunContext | None = None,
) -> Registration:
    """Register a logged model as a new version (``challenger``), unless its fingerprint exists."""
    with observed("register") as instruments:
        context = context or RunContext.start(model_name, overrides)
        name = context.model_name
        registration = call(tasks.register_version, context, "registering the model version",
                            context.tracking_uri, name, model_uri, run_id, model_id, Lineage.from_dict(lineage))
        if registration.created:
            instruments.registered(name)
            logger.info("registered {} version {} (challenger)", name, registration.version)
        else:
            logger.info("{} version {} has the same data, code and params: nothing registered",
                        name, registration.version)
        return registration


@flow(name="evaluate")
def evaluate(
    version: str,
    model_name: str | None = None,
    overrides: dict[str, Any] | None = None,
    context: RunContext | None = None,
) -> EvalSummary:
    """Held-out loss/perplexity, pyfunc latency p50/p95 and golden prompts of one version."""
    with observed("evaluate") as instruments:
        context = context or RunContext.start(model_name, overrides)
        settings, uri, name = context.settings, context.tracking_uri, context.model_name
        experiment = call(tasks.ensure_experiment, context, "creating the experiment", uri, settings.experiment)
        evaluation = call(tasks.evaluate_version, context, f"loading {name} v{version}",
                          uri, name, version, settings, context.corpus)
        summary = call(tasks.log_evaluation, context, "recording the evaluation",
                       uri, experiment, name, version, evaluation)
        instruments.evaluated(name, version, summary)
        publish_table(artifact_key(name, "golden", f"v{version}"), evaluation.golden_rows,
                      f"Golden prompts of {name} v{version}")
        logger.info("evaluated {} v{}: loss {:.4f}, p95 {:.1f} ms, golden {:.0%}", name, version,
                    summary.heldout_loss, summary.latency_p95_s * 1e3, summary.golden_pass_rate)
        return summary
