"""Events a query may need before it returns data; the live proof drives some and lists the rest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Event:
    key: str  # short id, e.g. for ``observatory dashboards verify --expect KEY``
    text: str  # what happens, as panel descriptions say it ("Empty until <text>.")


GPU: Final = Event("gpu", "an NVIDIA GPU is sampled")  # inferred from the metrics a query reads
RATE_LIMITED: Final = Event("rate_limited", "a request is refused by a rate limit (429)")
HOT_SWAP: Final = Event("hot_swap", "the gateway hot-swaps to a new model version")
REGISTRY_ERROR: Final = Event("registry_error", "a model-registry poll fails")
INFERENCE_ERROR: Final = Event(
    "inference_error", "a generation ends with an error (e.g. the model raises mid-stream; a client leaving is none)"
)
UPSTREAM: Final = Event("upstream", "a gateway runs with the upstream (proxy) backend")
EXPORT_FAILURE: Final = Event("export_failure", "a telemetry export fails")
ALERT_ACTIVE: Final = Event("alert_active", "an alert is pending or firing")
GPU_READ_ERROR: Final = Event("gpu_read_error", "an NVML reading fails")
PIPELINE_RUN: Final = Event("pipeline_run", "a pipeline run pushes its metrics")
FAIL_OPEN: Final = Event("fail_open", "the rate-limit store fails and a request is admitted unchecked")
SERIES_OVERFLOW: Final = Event("series_overflow", "a metric reaches its series limit")
AUTH_THROTTLED: Final = Event("auth_throttled", "failed-auth throttling refuses a client (429)")
# What the vLLM panels wait for (a proxy to another OpenAI-compatible server has no vllm:* series).
VLLM_SCRAPED: Final = Event("vllm", "Prometheus scrapes a vLLM server's /metrics (the vllm job)")

# The fleet (a model served by a replica pool; tests/dashboards/test_fleet.py drives each).
FLEET: Final = Event("fleet", "a gateway serves a model from a replica pool")
REPLICA_EJECTED: Final = Event("replica_ejected", "a pool ejects a replica (consecutive failed attempts)")
FLEET_RETRY: Final = Event("fleet_retry", "a pool retries a failed attempt on another replica")
RETRY_DENIED: Final = Event("retry_denied", "a pool's retry budget is spent and a retryable failure is not retried")
POOL_UNAVAILABLE: Final = Event("pool_unavailable", "a pool refuses a request with no replica able to take it")
FALLBACK: Final = Event("fallback", "a request is served by a fallback model (its own pool had no healthy replica)")
FLEET_EVENTS: Final = (FLEET, REPLICA_EJECTED, FLEET_RETRY, RETRY_DENIED, POOL_UNAVAILABLE, FALLBACK)

# Usage and cost (issue 17; tests/dashboards/test_usage.py drives each).
PRICED: Final = Event("priced", "a request for a priced model (prices_file) is settled")
BUDGET: Final = Event("budget", "a tenant with a budget (tenants_file) calls a priced model")
BUDGET_REFUSED: Final = Event("budget_refused", "a tenant is refused for its budget (429 insufficient_quota)")
LEDGER: Final = Event("ledger", "a gateway runs with the usage ledger on (ledger_enabled)")
LEDGER_DROPPED: Final = Event("ledger_dropped", "the ledger drops a row (spool full or failing, or closed)")
LEDGER_SHIP_FAILED: Final = Event("ledger_ship_failed", "the ledger store refuses a batch or cannot be reached")
USAGE_EVENTS: Final = (PRICED, BUDGET, BUDGET_REFUSED, LEDGER, LEDGER_DROPPED, LEDGER_SHIP_FAILED)

ALL: Final = (GPU, RATE_LIMITED, HOT_SWAP, REGISTRY_ERROR, INFERENCE_ERROR, UPSTREAM, EXPORT_FAILURE, ALERT_ACTIVE,
              GPU_READ_ERROR, PIPELINE_RUN, FAIL_OPEN, SERIES_OVERFLOW, AUTH_THROTTLED, VLLM_SCRAPED, *FLEET_EVENTS,
              *USAGE_EVENTS)
