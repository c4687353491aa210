"""Pipeline benchmarks (issue 5), measured side by side in one run.

1. Wall time of ``pipeline`` on embedded defaults: a fresh state folder (SQLite MLflow store,
   artifacts beside it), Prefect's ephemeral API, default settings, training included. Cold: the
   first flow of the process (Prefect starts its temporary server on a new database, MLflow
   creates its schema).
   Warm: a second run with a new seed (so it trains and registers again). Target <= 60 s.
2. Flow overhead, training excluded: register + evaluate + promote as Prefect flows (subflows of
   one flow run, as ``pipeline`` runs them) against the same task functions called directly
   (``task.fn``: the same MLflow calls, no Prefect), for a first version and for a challenger
   judged against a champion. Target ratio <= 2.

Run from the repository root: ``.venv/bin/python bench/pipeline.py [--reps 3]``.
The machine's cores are shared: read the flow overhead as a ratio of medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def embedded_pipeline(state: Path) -> dict[str, Any]:
    """Figure 1: the whole pipeline twice on the embedded defaults of ``state``."""
    from gpt_observatory.flows.pipeline import pipeline

    started = time.perf_counter()
    cold = pipeline()
    cold_s = time.perf_counter() - started
    started = time.perf_counter()
    warm = pipeline(overrides={"seed": 4321})
    warm_s = time.perf_counter() - started
    return {"cold_s": cold_s, "warm_s": warm_s, "cold": cold, "warm": warm}


def train_and_log(uri: str, steps: int) -> tuple[str, str, str | None, Any]:
    """A logged model outside the measured part: (run id, model URI, logged model id, lineage)."""
    from gpt_observatory.flows import tasks
    from gpt_observatory.flows.context import RunContext
    from gpt_observatory.flows.stores import client_for, experiment_id

    context = RunContext.start(None, {"steps": steps, "progress": False, "tracking_uri": uri})
    settings, lineage = context.settings, context.lineage
    result = tasks.fit.fn(settings.train_params(), context.corpus, False, settings.torch_threads)
    experiment = experiment_id(client_for(uri), settings.experiment)
    run_id = tasks.start_training_run.fn(uri, experiment, lineage, "bench")
    model_uri, model_id = tasks.log_trained_model.fn(uri, run_id, result)
    return run_id, model_uri, model_id, lineage


def direct(uri: str, name: str, logged: tuple, context: Any) -> dict[str, float]:
    """register → evaluate → promote with the flows' task functions, called without Prefect."""
    import dataclasses

    from gpt_observatory.flows import history, lease, tasks
    from gpt_observatory.flows.gates import judge
    from gpt_observatory.flows.registry import CHALLENGER, CHAMPION
    from gpt_observatory.flows.stores import client_for

    settings = context.settings
    run_id, source, model_id, lineage = logged
    t0 = time.perf_counter()
    version = tasks.register_version.fn(uri, name, source, run_id, model_id, lineage).version
    t1 = time.perf_counter()
    experiment = tasks.ensure_experiment.fn(uri, settings.experiment)
    evaluation = tasks.evaluate_version.fn(uri, name, version, settings, context.corpus)
    tasks.log_evaluation.fn(uri, experiment, name, version, evaluation)
    t2 = time.perf_counter()
    token = tasks.acquire_lease.fn(uri, name, f"bench-{uuid.uuid4().hex[:8]}", settings)
    with lease.held(client_for(uri), name, token):
        champion = tasks.read_alias.fn(uri, name, CHAMPION)
        challenger = tasks.read_eval.fn(uri, name, version)
        incumbent = tasks.read_eval.fn(uri, name, champion) if champion else None
        if incumbent is not None:
            (c50, c95), (i50, i95) = tasks.compare_latency.fn(uri, name, [version, champion], settings)
            challenger = dataclasses.replace(challenger, latency_p50_s=c50, latency_p95_s=c95)
            incumbent = dataclasses.replace(incumbent, latency_p50_s=i50, latency_p95_s=i95)
        result = judge(challenger, incumbent, settings.gates())
        if result.passed:
            tasks.move_champion.fn(uri, name, version, champion)
        decision = history.Decision.new(
            decision="promoted" if result.passed else "rejected", model=name, version=version,
            from_version=champion, champion=version if result.passed else champion, reason=result.reason,
            figures=result.figures,
        )
        tasks.record_decision.fn(uri, decision)
    assert tasks.read_alias.fn(uri, name, CHALLENGER) in (None, version)
    t3 = time.perf_counter()
    return {"register": t1 - t0, "evaluate": t2 - t1, "promote": t3 - t2}


def with_flows(uri: str, name: str, logged: tuple, overrides: dict[str, Any]) -> dict[str, float]:
    """The same three steps as Prefect flows, composed as the pipeline composes them: subflows of
    one flow run (the pipeline's other subflow, train, is left out with the training)."""
    from prefect import flow

    from gpt_observatory.flows._flowkit import in_process_subflows
    from gpt_observatory.flows.context import RunContext
    from gpt_observatory.flows.lifecycle import evaluate, register
    from gpt_observatory.flows.promotion import promote

    run_id, source, model_id, lineage = logged
    timing: dict[str, float] = {}

    @flow(name="register-evaluate-promote")
    def stages() -> None:
        context = RunContext.start(name, overrides)
        t0 = time.perf_counter()
        with in_process_subflows():
            version = register(run_id=run_id, model_uri=source, model_id=model_id, lineage=lineage.to_dict(),
                               context=context).version
            t1 = time.perf_counter()
            evaluate(version=version, context=context)
            t2 = time.perf_counter()
            promote(version=version, context=context)
        timing.update(register=t1 - t0, evaluate=t2 - t1, promote=time.perf_counter() - t2)

    started = time.perf_counter()
    stages()
    timing["parent flow run"] = time.perf_counter() - started - sum(timing.values())
    return timing


def flow_overhead(state: Path, reps: int) -> dict[str, Any]:
    """Figure 2: median seconds of register+evaluate+promote (first version, then a challenger)."""
    from prefect import flow

    from gpt_observatory.flows.context import RunContext

    uri = f"sqlite:///{state / 'overhead.db'}"
    overrides = {"tracking_uri": uri, "progress": False}
    context = RunContext.start(None, overrides)
    first, second = train_and_log(uri, 60), train_and_log(uri, 200)

    @flow(name="warm-up")
    def warm_up() -> None:
        """Starts Prefect's ephemeral server outside the measured part."""

    warm_up()
    samples: dict[str, list[float]] = {"direct": [], "flows": []}
    phases: dict[str, dict[str, list[float]]] = {"direct": {}, "flows": {}}
    for rep in range(reps):
        for kind in (("direct", "flows") if rep % 2 == 0 else ("flows", "direct")):
            name = f"bench-{kind}-{uuid.uuid4().hex[:8]}"
            total = 0.0
            for logged in (first, second):
                if kind == "direct":
                    timing = direct(uri, name, logged, context)
                else:
                    timing = with_flows(uri, name, logged, overrides)
                total += sum(timing.values())
                for phase, seconds in timing.items():
                    phases[kind].setdefault(phase, []).append(seconds)
            samples[kind].append(total)
            print(f"  rep {rep + 1} {kind:6s} {total:6.2f} s", file=sys.stderr)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    per_phase = {k: {p: statistics.median(v) for p, v in d.items()} for k, d in phases.items()}
    return {"medians": medians, "phases": per_phase, "ratio": medians["flows"] / medians["direct"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="Repetitions of the flow-overhead comparison.")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="observatory-bench-"))
    os.environ["OBSERVATORY_STATE_DIR"] = str(state)
    # A private Prefect home: the ephemeral API's database is created fresh (part of "cold"), and
    # other Prefect processes on the machine cannot lock it.
    os.environ["PREFECT_HOME"] = str(state / "prefect")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # as the CLI does
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        if os.environ.pop(var, None):
            print(f"(ignoring {var}: this benchmark measures the embedded defaults)", file=sys.stderr)
    from gpt_observatory import telemetry
    telemetry.configure()  # embedded default: jsonl files in the state folder
    whole = embedded_pipeline(state)
    overhead = flow_overhead(state, args.reps)

    print("\n== pipeline on embedded defaults (training included; target <= 60 s)")
    for key in ("cold", "warm"):
        r = whole[key]
        print(f"  {key}: {whole[key + '_s']:6.1f} s   v{r.version} {r.decision}: {r.reason[:90]}")
    print("\n== flow overhead: register+evaluate+promote, flows vs direct calls (training excluded; target <= 2)")
    for kind in ("direct", "flows"):
        phases = ", ".join(f"{k} {v:.2f} s" for k, v in overhead["phases"][kind].items())
        print(f"  {kind:6s} {overhead['medians'][kind]:6.2f} s   (median per version: {phases})")
    print(f"  ratio  {overhead['ratio']:.2f}")
    telemetry.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
