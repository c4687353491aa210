"""Prometheus series and label names of what :mod:`telemetry.names` defines, for writing queries.

Every query in the dashboards and rules is written with these helpers, so a metric or attribute
renamed in the names module changes the generated artefacts (and a stale export fails the check).
"""

from __future__ import annotations

from typing import Final

from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.names import Metric, prometheus_series
from gpt_observatory.telemetry.names import prometheus_label as label


def total(metric: Metric) -> str:
    """The sample name of a counter (``..._total``)."""
    _expect(metric, "counter")
    return prometheus_series(metric)[0]


def bucket(metric: Metric) -> str:
    _expect(metric, "histogram")
    return prometheus_series(metric)[0]


def count(metric: Metric) -> str:
    _expect(metric, "histogram")
    return prometheus_series(metric)[2]


def gauge(metric: Metric) -> str:
    """The sample name of a gauge or up-down counter (no suffix beyond the unit)."""
    _expect(metric, "gauge", "updowncounter")
    return prometheus_series(metric)[0]


def le(boundary: float, buckets: tuple[float, ...]) -> str:
    """The ``le`` label value of ``boundary``, which must be one of the instrument's ``buckets``.

    The OTel Python exporter writes Python float text (``1.0``, ``0.25``); Prometheus 3 normalises
    every ``le`` to that same form.
    """
    if boundary not in buckets:
        raise ValueError(f"{boundary} is not a bucket boundary of {buckets}; an SLO threshold must be one")
    return repr(float(boundary))


def _expect(metric: Metric, *kinds: str) -> None:
    if metric.kind not in kinds:
        raise ValueError(f"{metric.name} is a {metric.kind}, not a {' or '.join(kinds)}")


# Labels (OpenTelemetry attribute keys with dots as underscores).
JOB: Final = "job"  # the scrape job; the OTel Collector's Prometheus exporter sets it from service.name
INSTANCE: Final = "instance"
LE: Final = "le"
SERVICE_NAME: Final = label(names.SERVICE_NAME)
SERVICE_VERSION: Final = label(names.SERVICE_VERSION)
HTTP_ROUTE: Final = label(names.HTTP_ROUTE)
HTTP_METHOD: Final = label(names.HTTP_REQUEST_METHOD)
STATUS_CODE: Final = label(names.HTTP_RESPONSE_STATUS_CODE)
ERROR_TYPE: Final = label(names.ERROR_TYPE)
TENANT: Final = label(names.TENANT)
REJECTION_REASON: Final = label(names.REJECTION_REASON)
AUTH_METHOD: Final = label(names.AUTH_METHOD)
AUTH_OUTCOME: Final = label(names.AUTH_OUTCOME)
TOKEN_TYPE: Final = label(names.GEN_AI_TOKEN_TYPE)
OPERATION: Final = label(names.GEN_AI_OPERATION_NAME)
REQUEST_MODEL: Final = label(names.GEN_AI_REQUEST_MODEL)
MODEL_NAME: Final = label(names.MODEL_NAME)
MODEL_VERSION: Final = label(names.MODEL_VERSION)
MODEL_ROLE: Final = label(names.MODEL_ROLE)
HW_ID: Final = label(names.HW_ID)
HW_NAME: Final = label(names.HW_NAME)
GPU_INDEX: Final = label(names.GPU_INDEX)
GPU_TASK: Final = label(names.HW_GPU_TASK)
CLOCK_DOMAIN: Final = label(names.GPU_CLOCK_DOMAIN)
CLOCK_EVENT_REASON: Final = label(names.GPU_CLOCK_EVENT_REASON)
NVML_FUNCTION: Final = label(names.GPU_NVML_FUNCTION)
PROCESS_PID: Final = label(names.PROCESS_PID)
PROCESS_NAME: Final = label(names.PROCESS_NAME)
PIPELINE_FLOW: Final = label(names.PIPELINE_FLOW)
PIPELINE_OUTCOME: Final = label(names.PIPELINE_OUTCOME)
PIPELINE_DECISION: Final = label(names.PIPELINE_DECISION)
TELEMETRY_SIGNAL: Final = label(names.TELEMETRY_SIGNAL)
TELEMETRY_BACKEND: Final = label(names.TELEMETRY_BACKEND)
TELEMETRY_OUTCOME: Final = label(names.TELEMETRY_OUTCOME)
TELEMETRY_METRIC: Final = label(names.TELEMETRY_METRIC)
RATE_LIMIT_FAILURE: Final = label(names.RATE_LIMIT_FAILURE)
AUTH_THROTTLE_KEY: Final = label(names.AUTH_THROTTLE_KEY)
# The fleet (replica pools, the model catalog's fallbacks).
POOL: Final = label(names.FLEET_POOL)
REPLICA: Final = label(names.FLEET_REPLICA)
FLEET_OUTCOME: Final = label(names.FLEET_OUTCOME)
FLEET_STATE: Final = label(names.FLEET_STATE)
CATALOG_MODEL: Final = label(names.CATALOG_MODEL)
FALLBACK_MODEL: Final = label(names.FALLBACK_MODEL)
# Usage and cost (issue 17).
CURRENCY: Final = label(names.USAGE_CURRENCY)
LEDGER_REASON: Final = label(names.LEDGER_DROP_REASON)

# Grafana variable filters shared by the dashboards.
BY_JOB: Final = f'{JOB}=~"$job"'
BY_TENANT: Final = f'{TENANT}=~"$tenant"'
BY_MODEL: Final = f'{REQUEST_MODEL}=~"$model"'
BY_GPU: Final = f'{HW_ID}=~"$gpu"'
BY_POOL: Final = f'{POOL}=~"$pool"'
BY_CATALOG_MODEL: Final = f'{CATALOG_MODEL}=~"$model"'
API_ROUTES: Final = f'{HTTP_ROUTE}=~"/v1/.+"'  # the OpenAI-compatible API (not /metrics, /healthz)
SERVER_ERRORS: Final = f'{STATUS_CODE}=~"5.."'
# A request that failed after its status went out (a stream cut, truncated or ended by shutdown)
# keeps that status (200) and carries error.type; the gateway also sets error.type on every 5xx
# of the duration histogram, but not on its per-tenant counter.
HAS_ERROR: Final = f'{ERROR_TYPE}!=""'
NO_ERROR: Final = f'{ERROR_TYPE}=""'

# vLLM's own metrics, which a vLLM upstream serves on its /metrics (scraped by the `vllm` job): the
# names of vLLM 0.10's V1 engine (vllm/v1/metrics/loggers.py, PrometheusStatLogger; labels model_name
# and engine). vllm:kv_cache_usage_perc replaced vllm:gpu_cache_usage_perc in 0.9. The project does not
# emit these; they are listed here, like Prometheus's own series, so the check knows them.
VLLM_RUNNING: Final = "vllm:num_requests_running"
VLLM_WAITING: Final = "vllm:num_requests_waiting"
VLLM_KV_CACHE_USAGE: Final = "vllm:kv_cache_usage_perc"
VLLM_PREEMPTIONS: Final = "vllm:num_preemptions_total"
VLLM_PROMPT_TOKENS: Final = "vllm:prompt_tokens_total"
VLLM_GENERATION_TOKENS: Final = "vllm:generation_tokens_total"
VLLM_TTFT: Final = "vllm:time_to_first_token_seconds"
VLLM_E2E: Final = "vllm:e2e_request_latency_seconds"
VLLM_QUEUE_TIME: Final = "vllm:request_queue_time_seconds"
VLLM_PREFILL_TIME: Final = "vllm:request_prefill_time_seconds"
VLLM_DECODE_TIME: Final = "vllm:request_decode_time_seconds"
VLLM_GAUGES: Final = {
    VLLM_RUNNING: "requests in model execution batches",
    VLLM_WAITING: "requests waiting to be scheduled",
    VLLM_KV_CACHE_USAGE: "KV-cache usage, 1 = full",
}
VLLM_COUNTERS: Final = {
    VLLM_PREEMPTIONS: "requests preempted by the engine (KV cache full; recomputed later)",
    VLLM_PROMPT_TOKENS: "prefill tokens processed",
    VLLM_GENERATION_TOKENS: "generation tokens processed",
}
VLLM_HISTOGRAMS: Final = {
    VLLM_TTFT: "time to first token (s)",
    VLLM_E2E: "end-to-end request latency (s)",
    VLLM_QUEUE_TIME: "time a request spent WAITING (s)",
    VLLM_PREFILL_TIME: "time a request spent in PREFILL (s)",
    VLLM_DECODE_TIME: "time a request spent in DECODE (s)",
}
VLLM_MODEL: Final = "model_name"  # vLLM's served model name
VLLM_ENGINE: Final = "engine"  # engine core index (data parallelism)
VLLM_SERIES: Final = {
    **VLLM_GAUGES, **VLLM_COUNTERS,
    **{f"{h}{suffix}": meaning for h, meaning in VLLM_HISTOGRAMS.items() for suffix in ("_bucket", "_sum", "_count")},
}
BY_VLLM_MODEL: Final = f'{VLLM_MODEL}=~"$model"'

# Series the artefacts may read besides the project's metrics: Prometheus's own, and vLLM's.
UP: Final = "up"
SCRAPE_DURATION: Final = "scrape_duration_seconds"
TARGET_INFO: Final = "target_info"
ALERTS: Final = "ALERTS"
PROMETHEUS_SERIES: Final = {
    UP: "scrape health, written by Prometheus for every target",
    SCRAPE_DURATION: "scrape latency, written by Prometheus for every target",
    TARGET_INFO: "OTel resource attributes, written by the OTel Prometheus exporter",
    ALERTS: "alert states, written by Prometheus's rule manager",
    **{name: f"vLLM: {meaning}" for name, meaning in VLLM_SERIES.items()},
}
PROMETHEUS_LABELS: Final = frozenset(
    {JOB, INSTANCE, LE, "__name__", "alertname", "alertstate", "severity", "slo", "quantile",
     "otel_scope_name", "otel_scope_version", VLLM_MODEL, VLLM_ENGINE}
)
GPU_NAME_PREFIXES: Final = ("hw.", "observatory.gpu.")  # metrics only a GPU machine emits
