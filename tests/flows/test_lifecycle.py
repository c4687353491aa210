"""The whole pipeline against a real MLflow server on PostgreSQL: it registers and promotes,
a second identical run registers nothing, one run is one trace, and its subflows share the
settings, store and corpus of the run."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from gpt_observatory.flows.stores import client_for
from gpt_observatory.telemetry import names
from tests.flows.conftest import ModelFactory, memory_telemetry


@dataclass
class Runs:
    model: str
    first: Any
    second: Any
    spans: list[Any]
    metrics: dict[str, list[Any]]
    first_run_did: dict[str, int]  # settings validations, store connections, corpus reads


@contextmanager
def counting() -> Iterator[dict[str, int]]:
    """Count settings validations, store connections and corpus reads while the body runs."""
    from gpt_observatory.flows import stores
    from gpt_observatory.flows.model import training
    from gpt_observatory.flows.settings import PipelineSettings

    counts = {"settings": 0, "store": 0, "corpus": 0}

    def counted(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            counts[key] += 1
            return fn(*args, **kwargs)
        return call

    load = PipelineSettings.load.__func__
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PipelineSettings, "load", classmethod(counted("settings", load)))
        mp.setattr(stores, "tracking_uri", counted("store", stores.tracking_uri))
        mp.setattr(training, "default_corpus_path", counted("corpus", training.default_corpus_path))
        yield counts


@pytest.fixture(scope="module")
def runs(pg_models: ModelFactory) -> Runs:
    from gpt_observatory.flows.pipeline import pipeline

    model = f"pg-{uuid.uuid4().hex[:8]}"
    overrides = pg_models.overrides(steps=20)
    handle = memory_telemetry()
    with counting() as first_run_did:
        first = pipeline(model_name=model, overrides=overrides)
    spans = handle.memory.spans()
    metrics = handle.memory.metrics()
    second = pipeline(model_name=model, overrides=overrides)
    return Runs(model, first, second, spans, metrics, first_run_did)


def test_pipeline_registers_and_promotes_with_lineage(runs: Runs, pg_mlflow) -> None:
    client = client_for(pg_mlflow.url)
    assert runs.first.registered and runs.first.decision == "promoted", runs.first
    champion = client.get_model_version_by_alias(runs.model, "champion")
    assert champion.version == runs.first.version
    tags = champion.tags
    training_run = client.get_run(tags["observatory.training_run_id"])
    assert training_run.data.params["steps"] == "20"
    assert "heldout_loss" in training_run.data.metrics
    assert tags["observatory.data_hash"].startswith("sha256:")
    assert tags["observatory.code_version"].startswith("sha256:")
    assert json.loads(tags["observatory.params"])["steps"] == 20
    assert json.loads(tags["observatory.eval"])["heldout_loss"] > 0
    assert tags["observatory.last_decision"] == "promoted"


def test_second_identical_run_registers_nothing(runs: Runs, pg_mlflow) -> None:
    client = client_for(pg_mlflow.url)
    assert not runs.second.registered
    assert runs.second.version == runs.first.version
    assert runs.second.decision is None  # already the champion: nothing to decide
    assert len(client.search_model_versions(f"name='{runs.model}'")) == 1
    experiment = client.get_experiment_by_name("tiny-gpt")
    trainings = client.search_runs([experiment.experiment_id], f"attributes.run_name = 'train {runs.model}'")
    assert len(trainings) == 1  # the second run did not train either


def test_one_pipeline_run_is_one_trace_of_flow_and_task_spans(runs: Runs) -> None:
    flows = [s for s in runs.spans if s.attributes.get("prefect.run.type") == "flow"]
    tasks = [s for s in runs.spans if s.attributes.get("prefect.run.type") == "task"]
    assert len(flows) >= 5, [s.name for s in flows]  # pipeline, train, register, evaluate, promote
    assert {"fit", "register-version", "evaluate-version", "move-champion"} <= {
        t.name.rsplit("-", 1)[0] for t in tasks
    }
    assert {s.context.trace_id for s in runs.spans} == {flows[0].context.trace_id}
    decision = next(s for s in runs.spans if s.name == names.SPAN_PIPELINE_DECISION)
    assert decision.attributes[names.PIPELINE_DECISION] == "promoted"


def test_pipeline_counts_decisions_and_registrations(runs: Runs) -> None:
    def value(metric: names.Metric, **attrs: str) -> float:
        points = runs.metrics.get(metric.name, [])
        return sum(p.value for p in points if all(p.attributes.get(k) == v for k, v in attrs.items()))

    assert value(names.PIPELINE_DECISIONS, **{names.PIPELINE_DECISION: "promoted", names.MODEL_NAME: runs.model}) == 1
    assert value(names.PIPELINE_REGISTRATIONS, **{names.MODEL_NAME: runs.model}) == 1
    assert value(names.EVAL_LOSS, **{names.MODEL_NAME: runs.model}) > 0


def test_one_run_validates_settings_connects_the_store_and_reads_the_corpus_once(runs: Runs) -> None:
    """Train, register, evaluate and promote take the pipeline's context instead of their own."""
    assert runs.first.registered and runs.first.decision == "promoted"  # every subflow ran
    assert runs.first_run_did == {"settings": 1, "store": 1, "corpus": 1}


def test_subflows_record_the_shared_context_with_the_store_uri_masked(runs: Runs) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        recorded = [run.parameters["context"] for run in client.read_flow_runs() if run.parameters.get("context")]

    assert recorded, "no subflow run took the pipeline's context"
    assert {context["store_uri"] for context in recorded} == {"**********"}


def test_recorded_settings_never_carry_the_tracking_uris_password() -> None:
    from gpt_observatory.flows.settings import load_settings

    settings = load_settings(tracking_uri="postgresql://mlflow:hunter2@db:5432/mlflow")

    assert settings.tracking_uri == "postgresql://mlflow:hunter2@db:5432/mlflow"  # used as given
    assert settings.model_dump(mode="json")["tracking_uri"] == "postgresql://db:5432/mlflow"
    assert "hunter2" not in settings.model_dump_json()
