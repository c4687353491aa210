"""Pipeline: flow runs, registrations, promotion decisions, evaluation metrics per version.

Batch flow runs push their metrics to the Pushgateway (scraped with ``honor_labels``), so a
counter holds the counts of the last push of each job; panels show those values, not rates.
"""

from __future__ import annotations

from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards._grafana import Board, Panel, Row, q
from gpt_observatory.dashboards.boards._common import JOB_VAR, REGISTERED_MODEL_VAR
from gpt_observatory.dashboards.query import agg, sel
from gpt_observatory.telemetry import names

BY_REGISTERED: str = f'{s.MODEL_NAME}=~"$registered_model"'
ROLLED_BACK: str = f'{s.PIPELINE_DECISION}="rolled_back"'


def board() -> Board:
    version = f"{{{{{s.MODEL_NAME}}}}} v{{{{{s.MODEL_VERSION}}}}}"

    def per_version(metric: names.Metric) -> str:
        return agg("max", sel(s.gauge(metric), s.BY_JOB, BY_REGISTERED), (s.MODEL_NAME, s.MODEL_VERSION))

    return Board(
        uid="observatory-pipeline",
        title="Observatory / Pipeline",
        description="Train, register, evaluate, promote: runs, decisions and evaluation metrics per model version.",
        variables=(JOB_VAR, REGISTERED_MODEL_VAR),
        rows=(
            Row("Runs and decisions", (
                Panel("Flow runs by outcome",
                      (q(agg("sum", sel(s.total(names.PIPELINE_RUNS), s.BY_JOB), (s.PIPELINE_FLOW, s.PIPELINE_OUTCOME)),
                         f"{{{{{s.PIPELINE_FLOW}}}}} {{{{{s.PIPELINE_OUTCOME}}}}}"),), kind="bargauge", width=8,
                      description="Runs counted by the last push of each flow-run process."),
                Panel("Promotion decisions",
                      (q(agg("sum", sel(s.total(names.PIPELINE_DECISIONS), s.BY_JOB, BY_REGISTERED),
                             (s.MODEL_NAME, s.PIPELINE_DECISION)),
                         f"{{{{{s.MODEL_NAME}}}}} {{{{{s.PIPELINE_DECISION}}}}}"),), kind="bargauge", width=8),
                Panel("Versions registered",
                      (q(agg("sum", sel(s.total(names.PIPELINE_REGISTRATIONS), s.BY_JOB, BY_REGISTERED),
                             (s.MODEL_NAME,)), f"{{{{{s.MODEL_NAME}}}}}"),), kind="stat", width=8),
                Panel("Rollbacks",
                      (q(f"{agg('sum', sel(s.total(names.PIPELINE_DECISIONS), s.BY_JOB, BY_REGISTERED, ROLLED_BACK), (s.MODEL_NAME,))}"
                         f" or {agg('sum', sel(s.total(names.PIPELINE_DECISIONS), s.BY_JOB, BY_REGISTERED), (s.MODEL_NAME,))}"
                         " * 0", f"{{{{{s.MODEL_NAME}}}}}"),), kind="stat", width=8,
                      description="Champions rolled back (by the canary guard on an SLO breach, or by hand) in the "
                                  "last push of each flow run; the ModelRolledBack alert fires on it."),
                Panel("Time since the last promotion",
                      (q(f"time() - {agg('max', sel(s.gauge(names.PIPELINE_LAST_PROMOTION), BY_REGISTERED), (s.MODEL_NAME,))}",
                         f"{{{{{s.MODEL_NAME}}}}}"),), kind="stat", unit="s", width=16,
                      description="A champion older than the alert's bound means the pipeline stopped promoting."),
            )),
            Row("Evaluation per version", (
                Panel("Held-out loss", (q(per_version(names.EVAL_LOSS), version),), kind="bargauge", width=8),
                Panel("Perplexity", (q(per_version(names.EVAL_PERPLEXITY), version),), kind="bargauge", width=8),
                Panel("Golden-prompt pass rate", (q(per_version(names.EVAL_GOLDEN_PASS_RATE), version),),
                      kind="bargauge", unit="percentunit", width=8),
                Panel("Evaluation latency", (
                    q(per_version(names.EVAL_LATENCY_P50), f"p50 {version}"),
                    q(per_version(names.EVAL_LATENCY_P95), f"p95 {version}"),
                ), kind="bargauge", unit="s", width=12, description="Latency of the pyfunc in evaluation."),
                Panel("Training time", (q(agg("max", sel(s.gauge(names.PIPELINE_TRAIN_DURATION), s.BY_JOB, BY_REGISTERED),
                                              (s.MODEL_NAME,)), f"{{{{{s.MODEL_NAME}}}}}"),),
                      kind="stat", unit="s", width=12, description="Wall time of the last training run."),
            )),
        ),
    )
