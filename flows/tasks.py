"""Every Prefect task of the flows: one MLflow (or Prometheus) step each, retried on transient errors.

Tasks take the tracking URI and run ids as arguments: MLflow's active run is thread-local
and Prefect may run a task on another thread, so nothing relies on ambient MLflow state.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import mlflow
from mlflow.entities import Metric, Param
from prefect import task
from prefect.cache_policies import NO_CACHE

from gpt_observatory.flows import history, lease
from gpt_observatory.flows.errors import retry_transient
from gpt_observatory.flows.gates import EvalSummary
from gpt_observatory.flows.lineage import Lineage
from gpt_observatory.flows.live import LiveFigures, LiveQueries, Prometheus, PrometheusError, Side
from gpt_observatory.flows.model.evaluation import Evaluation
from gpt_observatory.flows.model.training import Corpus, TrainParams, TrainResult, torch_threads, train
from gpt_observatory.flows.registry import (
    CHALLENGER,
    CHAMPION,
    CODE_VERSION_TAG,
    DATA_HASH_TAG,
    EVAL_MODEL_TAG,
    EVAL_VERSION_TAG,
    FINGERPRINT_TAG,
    PREVIOUS,
    Registration,
    Registry,
)
from gpt_observatory.flows.settings import CanarySettings, PipelineSettings
from gpt_observatory.flows.stores import client_for, experiment_id, use

_MLFLOW = {"retry_condition_fn": retry_transient, "cache_policy": NO_CACHE, "retries": 3, "retry_delay_seconds": 2}


@task(name="fit", cache_policy=NO_CACHE)
def fit(params: TrainParams, corpus: Corpus, progress: bool, threads: int) -> TrainResult:
    with torch_threads(threads):
        return train(params, corpus, progress=progress)


@task(name="ensure-experiment", **_MLFLOW)
def ensure_experiment(uri: str, name: str) -> str:
    return experiment_id(client_for(uri), name)


@task(name="start-training-run", **_MLFLOW)
def start_training_run(uri: str, experiment: str, lineage: Lineage, model_name: str) -> str:
    client = client_for(uri)
    run = client.create_run(
        experiment,
        run_name=f"train {model_name}",
        tags={FINGERPRINT_TAG: lineage.fingerprint, DATA_HASH_TAG: lineage.data_hash,
              CODE_VERSION_TAG: lineage.code_version},
    )
    params = [Param(key, str(value)) for key, value in lineage.params.as_dict().items()]
    client.log_batch(run.info.run_id, params=params)
    return str(run.info.run_id)


@task(name="log-model", **_MLFLOW)
def log_trained_model(uri: str, run_id: str, result: TrainResult) -> tuple[str, str | None]:
    """Log metrics and the pyfunc into ``run_id``; return (model URI, logged model id)."""
    from gpt_observatory.flows.model import pyfunc

    use(uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({
            "train_loss": result.train_loss,
            "heldout_loss": result.heldout_loss,
            "train_duration_s": result.duration_s,
            "tokens_seen": result.tokens_seen,
        })
        info = pyfunc.log_model(result.model)
    return info.model_uri, info.model_id


@task(name="register-version", **_MLFLOW)
def register_version(uri: str, name: str, source: str, run_id: str, model_id: str | None, lineage: Lineage) -> Registration:
    registry = Registry(client_for(uri), name)
    registration = registry.register(source, run_id, model_id, lineage)
    if registration.created:
        registry.set_alias(CHALLENGER, registration.version)
    return registration


@task(name="find-version", **_MLFLOW)
def find_version(uri: str, name: str, fingerprint: str) -> str | None:
    found = Registry(client_for(uri), name).find(fingerprint)
    return str(found.version) if found is not None else None


@task(name="read-alias", **_MLFLOW)
def read_alias(uri: str, name: str, alias: str) -> str | None:
    return Registry(client_for(uri), name).alias(alias)


@task(name="read-eval", **_MLFLOW)
def read_eval(uri: str, name: str, version: str) -> EvalSummary | None:
    return Registry(client_for(uri), name).load_eval(version)


@task(name="evaluate-version", **_MLFLOW)
def evaluate_version(uri: str, name: str, version: str, settings: PipelineSettings, corpus: Corpus) -> Evaluation:
    from gpt_observatory.flows.model.evaluation import evaluate

    use(uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    with torch_threads(settings.torch_threads):
        return evaluate(
            model,
            corpus,
            settings.heldout_fraction,
            settings.eval_latency_samples,
            settings.eval_max_tokens,
            settings.max_golden_loss,
        )


@task(name="compare-latency", **_MLFLOW)
def compare_latency(uri: str, name: str, versions: list[str], settings: PipelineSettings) -> list[tuple[float, float]]:
    """(p50, p95) of each version, measured side by side now (stored figures may come from a
    quieter or busier moment of the machine)."""
    from gpt_observatory.flows.model.evaluation import latency_figures, measure_latency

    use(uri)
    models = [mlflow.pyfunc.load_model(f"models:/{name}/{v}") for v in versions]
    with torch_threads(settings.torch_threads):
        measured = measure_latency(models, settings.eval_latency_samples, settings.eval_max_tokens)
    return [latency_figures(m) for m in measured]


@task(name="log-evaluation", **_MLFLOW)
def log_evaluation(uri: str, experiment: str, name: str, version: str, evaluation: Evaluation) -> EvalSummary:
    """An evaluation run (metrics + golden table) and the figures as tags on the version."""
    client = client_for(uri)
    s = evaluation.summary
    run = client.create_run(experiment, run_name=f"evaluate {name} v{version}",
                            tags={EVAL_MODEL_TAG: name, EVAL_VERSION_TAG: version})
    run_id = str(run.info.run_id)
    now = int(time.time() * 1000)
    keys = ("heldout_loss", "perplexity", "latency_p50_s", "latency_p95_s", "golden_pass_rate")
    client.log_batch(run_id, metrics=[Metric(k, float(getattr(s, k)), now, 0) for k in keys])
    client.log_table(run_id, {k: [r[k] for r in evaluation.golden_rows] for k in evaluation.golden_rows[0]},
                     "golden_prompts.json")
    client.set_terminated(run_id)
    summary = dataclasses.replace(s, run_id=run_id)
    Registry(client, name).save_eval(version, summary)
    return summary


@task(name="acquire-lease", **_MLFLOW)
def acquire_lease(uri: str, name: str, holder: str, settings: PipelineSettings) -> str:
    return lease.acquire(client_for(uri), name, holder, settings.lease_ttl_s, settings.lease_settle_s,
                         settings.lock_timeout_s)


@task(name="move-champion", **_MLFLOW)
def move_champion(uri: str, name: str, version: str, previous: str | None) -> None:
    """Point ``champion`` at ``version``; ``previous`` keeps the old one addressable."""
    registry = Registry(client_for(uri), name)
    registry.set_alias(CHAMPION, version)
    if previous is not None and previous != version:
        registry.set_alias(PREVIOUS, previous)
    else:
        registry.clear_alias(PREVIOUS)
    registry.clear_alias(CHALLENGER, only_if=version)


@task(name="read-history", **_MLFLOW)
def read_history(uri: str, name: str) -> list[history.Decision]:
    return history.read(client_for(uri), name)


@task(name="record-decision", **_MLFLOW)
def record_decision(uri: str, decision: history.Decision) -> None:
    history.record(client_for(uri), decision)


# ------------------------------------------------------------------ canary and guard
@task(name="read-live-figures", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1,
      retry_condition_fn=lambda task, run, state: _is_prometheus_error(state))
def read_live(live: CanarySettings, model: str, window_s: float, sides: list[Side]) -> dict[Side, LiveFigures]:
    """Both sides' figures on the users' requests (``gen_ai.server.*`` by role and version)."""
    queries = LiveQueries(Prometheus(live.prometheus_url, live.query_timeout_s), model, live.selector)
    return queries.figures(window_s, sides)


@task(name="read-shadow-figures", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1,
      retry_condition_fn=lambda task, run, state: _is_prometheus_error(state))
def read_shadow(live: CanarySettings, model: str, window_s: float, sides: list[Side]) -> dict[Side, LiveFigures]:
    """Both sides' figures on mirrored requests (``observatory.shadow.*``)."""
    queries = LiveQueries(Prometheus(live.prometheus_url, live.query_timeout_s), model, live.selector, "shadow")
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


def options(settings: PipelineSettings) -> dict[str, Any]:
    """Retry options from settings, for ``task.with_options``."""
    return {"retries": settings.retries, "retry_delay_seconds": settings.retry_delay_s}
