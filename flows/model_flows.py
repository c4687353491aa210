"""Prefect flows that make and measure a model version: ``train``, ``register``, ``evaluate``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loguru import logger
from prefect import flow

from gpt_observatory.flows import tasks
from gpt_observatory.flows._flowkit import artifact_key, call, lineage_for, observed, publish_table, settings_for
from gpt_observatory.flows.gates import EvalSummary
from gpt_observatory.flows.lineage import Lineage
from gpt_observatory.flows.registry import Registration
from gpt_observatory.flows.stores import connect


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
def train(model_name: str | None = None, overrides: dict[str, Any] | None = None) -> TrainOutput:
    """Train the reference model and log it, with its metrics, as a pyfunc in an MLflow run."""
    with observed("train") as instruments:
        settings = settings_for(model_name, overrides)
        uri = connect(settings).tracking_uri
        experiment = call(tasks.ensure_experiment, settings, uri, "creating the experiment", uri, settings.experiment)
        lineage = lineage_for(settings)
        result = tasks.fit(settings.train_params(), settings.progress, settings.torch_threads)
        logger.info("trained {} in {:.1f}s: held-out loss {:.4f}", settings.model_name, result.duration_s,
                    result.heldout_loss)
        run_id = call(tasks.start_training_run, settings, uri, "creating the training run",
                      uri, experiment, lineage, settings.model_name)
        model_uri, model_id = call(tasks.log_trained_model, settings, uri, "logging the model", uri, run_id, result)
        instruments.trained(settings.model_name, result.duration_s)
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
) -> Registration:
    """Register a logged model as a new version (``challenger``), unless its fingerprint exists."""
    with observed("register") as instruments:
        settings = settings_for(model_name, overrides)
        uri = connect(settings).tracking_uri
        parsed = Lineage.from_dict(lineage)
        registration = call(tasks.register_version, settings, uri, "registering the model version",
                            uri, settings.model_name, model_uri, run_id, model_id, parsed)
        if registration.created:
            instruments.registered(settings.model_name)
            logger.info("registered {} version {} (challenger)", settings.model_name, registration.version)
        else:
            logger.info("{} version {} has the same data, code and params: nothing registered",
                        settings.model_name, registration.version)
        return registration


@flow(name="evaluate")
def evaluate(version: str, model_name: str | None = None, overrides: dict[str, Any] | None = None) -> EvalSummary:
    """Held-out loss/perplexity, pyfunc latency p50/p95 and golden prompts of one version."""
    with observed("evaluate") as instruments:
        settings = settings_for(model_name, overrides)
        uri = connect(settings).tracking_uri
        name = settings.model_name
        experiment = call(tasks.ensure_experiment, settings, uri, "creating the experiment", uri, settings.experiment)
        evaluation = call(tasks.evaluate_version, settings, uri, f"loading {name} v{version}",
                          uri, name, version, settings)
        summary = call(tasks.log_evaluation, settings, uri, "recording the evaluation",
                       uri, experiment, name, version, evaluation)
        instruments.evaluated(name, version, summary)
        publish_table(artifact_key(name, "golden", f"v{version}"), evaluation.golden_rows,
                      f"Golden prompts of {name} v{version}")
        logger.info("evaluated {} v{}: loss {:.4f}, p95 {:.1f} ms, golden {:.0%}", name, version,
                    summary.heldout_loss, summary.latency_p95_s * 1e3, summary.golden_pass_rate)
        return summary
