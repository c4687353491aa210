"""Every span, attribute and metric name Observatory emits, in one place.

OpenTelemetry semantic-convention names are taken from ``opentelemetry.semconv`` where
the package has them (pinned with the SDK: semconv 0.66b*, GenAI and hardware conventions
at Development status). Names without a convention live in the ``observatory.`` namespace.
Dashboards and alert rules are checked against :data:`METRICS` (``observatory dashboards check``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as _gen_ai
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics as _gen_ai_m
from opentelemetry.semconv._incubating.metrics import hw_metrics as _hw_m
from opentelemetry.semconv.attributes import (
    error_attributes,
    http_attributes,
    server_attributes,
    service_attributes,
    url_attributes,
)
from opentelemetry.semconv.metrics import http_metrics as _http_m

from gpt_observatory.telemetry import _genai_latest

SEMCONV_SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.37.0"

InstrumentKind = Literal["counter", "updowncounter", "histogram", "gauge"]


@dataclass(frozen=True, slots=True)
class Metric:
    """A metric the project emits: its OTel name, unit, instrument kind and meaning."""

    name: str
    unit: str
    kind: InstrumentKind
    description: str

    @property
    def prometheus(self) -> str:
        """The series name the OTel Prometheus exporter gives this metric (without suffixes)."""
        return prometheus_name(self)


# Unit suffixes the OpenTelemetry Prometheus exporter appends (opentelemetry-exporter-prometheus).
_PROM_UNITS: Final = {
    "s": "seconds",
    "ms": "milliseconds",
    "By": "bytes",
    "J": "joules",
    "W": "watts",
    "Cel": "celsius",
    "Hz": "hertz",
}


_PROM_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_label(attribute: str) -> str:
    """The Prometheus label name an OTel attribute becomes (``gen_ai.request.model`` → ``gen_ai_request_model``)."""
    return _PROM_INVALID.sub("_", attribute)


def _prometheus_metric(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_:]", "_", text)  # metric names may also hold ':'


def prometheus_name(metric: Metric) -> str:
    """Prometheus family name of ``metric`` as the OTel Prometheus exporter writes it.

    Counters get ``_total`` on the sample; histograms ``_bucket``/``_sum``/``_count``.
    """
    base = _prometheus_metric(metric.name)
    unit = metric.unit
    if (unit.startswith("{") and unit.endswith("}")) or unit == "1":
        unit = ""
    suffix = _PROM_UNITS.get(unit, _prometheus_metric(unit))
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    return base


def prometheus_series(metric: Metric) -> tuple[str, ...]:
    """Every sample name a scrape shows for ``metric``."""
    base = prometheus_name(metric)
    if metric.kind == "counter":
        return (base + "_total",)
    if metric.kind == "histogram":
        return (base + "_bucket", base + "_sum", base + "_count")
    return (base,)


# --------------------------------------------------------------------------- resource
SERVICE_NAME: Final = service_attributes.SERVICE_NAME
SERVICE_VERSION: Final = service_attributes.SERVICE_VERSION
DEPLOYMENT_ENVIRONMENT: Final = "deployment.environment.name"
HOST_NAME: Final = "host.name"

# --------------------------------------------------------------------------- HTTP / gateway
HTTP_REQUEST_METHOD: Final = http_attributes.HTTP_REQUEST_METHOD
HTTP_REQUEST_METHOD_ORIGINAL: Final = http_attributes.HTTP_REQUEST_METHOD_ORIGINAL  # span only, with "_OTHER"
HTTP_METHODS: Final = frozenset(m.value for m in http_attributes.HttpRequestMethodValues) - {"_OTHER"}
HTTP_METHOD_OTHER: Final = "_OTHER"  # any other method, as a label value (the semantic conventions' closed set)
HTTP_ROUTE: Final = http_attributes.HTTP_ROUTE
HTTP_RESPONSE_STATUS_CODE: Final = http_attributes.HTTP_RESPONSE_STATUS_CODE
URL_PATH: Final = url_attributes.URL_PATH
URL_SCHEME: Final = url_attributes.URL_SCHEME
SERVER_ADDRESS: Final = server_attributes.SERVER_ADDRESS
SERVER_PORT: Final = server_attributes.SERVER_PORT
ERROR_TYPE: Final = error_attributes.ERROR_TYPE

TENANT: Final = "observatory.tenant"
REJECTION_REASON: Final = "observatory.rejection.reason"
RATE_LIMIT_KIND: Final = "observatory.rate_limit.kind"  # "requests" | "tokens"
REJECTION_REASONS: Final = (
    "auth", "auth_throttled", "forbidden", "rate_limit", "bad_request", "too_large", "upstream", "not_found",
)
# gen_ai.request.model (and every other model label) takes catalog names only; anything else is this.
MODEL_OTHER: Final = "other"
RATE_LIMIT_FAILURE: Final = "observatory.rate_limit.failure"  # "timeout" | "error" (fail-open cause)
RATE_LIMIT_FAILURES: Final = ("timeout", "error")

HTTP_SERVER_REQUEST_DURATION = Metric(
    _http_m.HTTP_SERVER_REQUEST_DURATION, "s", "histogram", "Duration of HTTP server requests."
)
HTTP_SERVER_ACTIVE_REQUESTS = Metric(
    "http.server.active_requests", "{request}", "updowncounter", "Number of active HTTP server requests."
)
GATEWAY_REQUESTS = Metric(
    "observatory.gateway.requests", "{request}", "counter", "Metered requests per tenant and status."
)
GATEWAY_TOKENS = Metric(
    "observatory.gateway.tokens", "{token}", "counter", "Metered tokens per tenant and gen_ai.token.type."
)
GATEWAY_REJECTIONS = Metric(
    "observatory.gateway.rejections", "{request}", "counter", "Requests rejected by the gateway, by reason."
)
# Bucket boundaries the HTTP metric conventions recommend for http.server.request.duration.
HTTP_DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
RATE_LIMIT_KINDS: Final = ("requests", "tokens")
RATE_LIMIT_FAIL_OPEN = Metric(
    "observatory.gateway.rate_limit.fail_open", "{request}", "counter",
    "Requests admitted unchecked because the rate-limit store failed or timed out, by observatory.rate_limit.failure.",
)

# --------------------------------------------------------------------------- auth
SPAN_AUTH_VERIFY: Final = "auth.verify"
AUTH_METHOD: Final = "observatory.auth.method"  # "jwt" | "api_key"
AUTH_OUTCOME: Final = "observatory.auth.outcome"
AUTH_SUBJECT_HASH: Final = "observatory.auth.subject_hash"
AUTH_METHODS: Final = ("jwt", "api_key", "none")
AUTH_OUTCOMES: Final = (
    "ok",
    "missing",
    "malformed",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "wrong_issuer",
    "wrong_audience",
    "unknown_key",
    "revoked",
    "insufficient_scope",
    "throttled",  # refused unchecked: the client address or key id failed too often (429 + Retry-After)
)
AUTH_THROTTLE_KEY: Final = "observatory.auth.throttle.key"  # what tripped the throttle: "address" | "key_id"
AUTH_THROTTLE_KEYS: Final = ("address", "key_id")
AUTH_ATTEMPTS = Metric("observatory.auth.attempts", "{attempt}", "counter", "Authentication attempts by method and outcome.")
AUTH_THROTTLED = Metric(
    "observatory.auth.throttled", "{attempt}", "counter",
    "Authentication attempts refused by failed-auth throttling, by observatory.auth.throttle.key.",
)
AUTH_DURATION = Metric("observatory.auth.duration", "s", "histogram", "Time spent verifying a credential.")
# Verification takes tens of microseconds (API key) to ~1 ms (RSA JWT); a JWKS fetch takes milliseconds.
AUTH_DURATION_BUCKETS: Final = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)

# --------------------------------------------------------------------------- GenAI inference
GEN_AI_OPERATION_NAME: Final = _gen_ai.GEN_AI_OPERATION_NAME
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = _gen_ai.GEN_AI_REQUEST_MODEL
GEN_AI_REQUEST_MAX_TOKENS: Final = _gen_ai.GEN_AI_REQUEST_MAX_TOKENS
GEN_AI_REQUEST_TEMPERATURE: Final = _gen_ai.GEN_AI_REQUEST_TEMPERATURE
GEN_AI_REQUEST_TOP_P: Final = _gen_ai.GEN_AI_REQUEST_TOP_P
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GEN_AI_RESPONSE_MODEL: Final = _gen_ai.GEN_AI_RESPONSE_MODEL
GEN_AI_RESPONSE_ID: Final = _gen_ai.GEN_AI_RESPONSE_ID
GEN_AI_RESPONSE_FINISH_REASONS: Final = _gen_ai.GEN_AI_RESPONSE_FINISH_REASONS
GEN_AI_USAGE_INPUT_TOKENS: Final = _gen_ai.GEN_AI_USAGE_INPUT_TOKENS
GEN_AI_USAGE_OUTPUT_TOKENS: Final = _gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS
GEN_AI_TOKEN_TYPE: Final = _gen_ai.GEN_AI_TOKEN_TYPE
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"  # only with capture_content on
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"  # only with capture_content on
GEN_AI_PROVIDER: Final = "observatory"  # gen_ai.provider.name for in-process serving

MODEL_NAME: Final = "observatory.model.name"  # MLflow registered model name
MODEL_VERSION: Final = "observatory.model.version"
MODEL_ALIAS: Final = "observatory.model.alias"
MODEL_ROLE: Final = "observatory.model.role"  # "champion" | "challenger"
MODEL_ROLE_CHAMPION: Final = "champion"  # observatory.model.role values
MODEL_ROLE_CHALLENGER: Final = "challenger"
MODEL_ROLES: Final = (MODEL_ROLE_CHAMPION, MODEL_ROLE_CHALLENGER)
GPU_DEVICE_INDEX: Final = "observatory.gpu.device_index"
GPU_PEAK_MEMORY: Final = "observatory.gpu.peak_memory"  # bytes

# Bucket boundaries the GenAI metric conventions recommend.
DURATION_BUCKETS: Final = tuple(0.01 * 2**i for i in range(14))  # 0.01 s doubling to 81.92 s
TOKEN_BUCKETS: Final = tuple(4**i for i in range(14))  # 1, 4, 16, ... 67108864
TPOT_BUCKETS: Final = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)

GEN_AI_SERVER_REQUEST_DURATION = Metric(
    _gen_ai_m.GEN_AI_SERVER_REQUEST_DURATION, "s", "histogram", "Generative AI server request duration."
)
GEN_AI_SERVER_TIME_TO_FIRST_TOKEN = Metric(
    _gen_ai_m.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, "s", "histogram", "Time to generate the first token."
)
GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN = Metric(
    _gen_ai_m.GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN, "s", "histogram", "Time per output token after the first."
)
GEN_AI_CLIENT_OPERATION_DURATION = Metric(
    _gen_ai_m.GEN_AI_CLIENT_OPERATION_DURATION, "s", "histogram", "GenAI operation duration (as a client)."
)
GEN_AI_CLIENT_TIME_TO_FIRST_CHUNK = Metric(
    _gen_ai_m.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK, "s", "histogram", "Time to the first streamed chunk."
)
GEN_AI_CLIENT_TIME_PER_OUTPUT_CHUNK = Metric(
    _gen_ai_m.GEN_AI_CLIENT_OPERATION_TIME_PER_OUTPUT_CHUNK, "s", "histogram", "Time per streamed chunk after the first."
)
GEN_AI_CLIENT_TOKEN_USAGE = Metric(
    _gen_ai_m.GEN_AI_CLIENT_TOKEN_USAGE, "{token}", "histogram", "Tokens used per operation (as a client)."
)
# The conventions define no server-side token metric; ours mirrors the client one.
GEN_AI_SERVER_TOKEN_USAGE = Metric(
    "observatory.gen_ai.server.token.usage", "{token}", "histogram", "Tokens processed per request, served in-process."
)
GEN_AI_OUTPUT_TOKENS = Metric(
    "observatory.gen_ai.output_tokens", "{token}", "counter", "Output tokens produced (rate = tokens/s)."
)
# Boundaries the GenAI conventions recommend for time to first token / first chunk.
TTFT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
GEN_AI_OPERATION_CHAT: Final = "chat"  # gen_ai.operation.name values we emit
GEN_AI_OPERATION_TEXT_COMPLETION: Final = "text_completion"
GEN_AI_TOKEN_TYPE_INPUT: Final = "input"  # gen_ai.token.type values
GEN_AI_TOKEN_TYPE_OUTPUT: Final = "output"

# The pinned GenAI release (telemetry/_genai_latest.py): emitted instead of the 0.66b0 names above when
# OTEL_SEMCONV_STABILITY_OPT_IN holds gen_ai_latest_experimental, beside them with .../dup. Server
# metrics keep their names; the client ones and the token usage change. Decided once per GenAIHooks.
SEMCONV_OPT_IN_ENV: Final = _genai_latest.OPT_IN_ENV
GenAIEmission = _genai_latest.Emission
gen_ai_emission = _genai_latest.emission
GEN_AI_TOKEN_MODALITY: Final = _genai_latest.TOKEN_MODALITY
GEN_AI_TOKEN_MODALITY_UNKNOWN: Final = _genai_latest.TOKEN_MODALITY_UNKNOWN
GEN_AI_CLIENT_INFERENCE_DURATION = Metric(
    _genai_latest.CLIENT_INFERENCE_DURATION, "s", "histogram", "GenAI client inference duration (pinned release)."
)
GEN_AI_CLIENT_INFERENCE_TIME_TO_FIRST_CHUNK = Metric(
    _genai_latest.CLIENT_INFERENCE_TIME_TO_FIRST_CHUNK, "s", "histogram", "Time to the first streamed chunk (pinned release)."
)
GEN_AI_CLIENT_INFERENCE_TIME_PER_OUTPUT_CHUNK = Metric(
    _genai_latest.CLIENT_INFERENCE_TIME_PER_OUTPUT_CHUNK, "s", "histogram",
    "Time per streamed chunk after the first (pinned release).",
)
GEN_AI_CLIENT_INFERENCE_OPERATION_INPUT_TOKENS = Metric(
    _genai_latest.CLIENT_INFERENCE_OPERATION_INPUT_TOKENS, "{token}", "histogram", "Input tokens per inference operation."
)
GEN_AI_CLIENT_INFERENCE_OPERATION_OUTPUT_TOKENS = Metric(
    _genai_latest.CLIENT_INFERENCE_OPERATION_OUTPUT_TOKENS, "{token}", "histogram", "Output tokens per inference operation."
)
GEN_AI_CLIENT_INFERENCE_USAGE_INPUT_TOKENS = Metric(
    _genai_latest.CLIENT_INFERENCE_USAGE_INPUT_TOKENS, "{token}", "counter", "Input tokens used, by gen_ai.token.modality."
)
GEN_AI_CLIENT_INFERENCE_USAGE_OUTPUT_TOKENS = Metric(
    _genai_latest.CLIENT_INFERENCE_USAGE_OUTPUT_TOKENS, "{token}", "counter", "Output tokens used, by gen_ai.token.modality."
)

# Upstream answers (serving_hooks/backends/upstream.py): an optional usage field that fails its check
# is ignored (the answer is still served, the figure not used) and counted here by the field's name.
UPSTREAM_FIELD: Final = "observatory.upstream.field"
UPSTREAM_FIELDS: Final = ("cached_tokens",)  # usage.prompt_tokens_details.cached_tokens
UPSTREAM_IGNORED_FIELDS = Metric(
    "observatory.upstream.ignored_fields", "{answer}", "counter",
    "Upstream answers whose optional usage field failed its check and was ignored, by observatory.upstream.field.",
)

# Serving: the model the gateway serves from the MLflow registry.
MODEL_SWAPS = Metric(
    "observatory.serving.model_swaps", "{swap}", "counter", "Hot-swaps of the served model to a new registry version."
)
MODEL_REGISTRY_ERRORS = Metric(
    "observatory.serving.registry_errors", "{poll}", "counter", "Failed polls of the model registry (alias lookup or load)."
)

# --------------------------------------------------------------------------- GPU (OTel hardware conventions)
HW_ID: Final = "hw.id"
HW_NAME: Final = "hw.name"
HW_TYPE: Final = "hw.type"
HW_GPU_TASK: Final = "hw.gpu.task"  # general | encoder | decoder
HW_ERROR_TYPE: Final = "error.type"
GPU_INDEX: Final = "observatory.gpu.index"
GPU_MIG: Final = "observatory.gpu.mig"  # MIG profile of a MIG instance, e.g. "1g.10gb"
HW_PARENT: Final = "hw.parent"  # a MIG instance's parent GPU UUID
GPU_NVML_FUNCTION: Final = "observatory.gpu.nvml.function"  # the NVML call that failed (read errors)
GPU_CLOCK_DOMAIN: Final = "observatory.gpu.clock.domain"  # sm | memory | graphics
GPU_CLOCK_EVENT_REASON: Final = "observatory.gpu.clock_event.reason"
PROCESS_PID: Final = "process.pid"
PROCESS_NAME: Final = "process.executable.name"

HW_GPU_UTILIZATION = Metric("hw.gpu.utilization", "1", "gauge", "Fraction of time the GPU was busy, by hw.gpu.task.")
HW_GPU_MEMORY_USAGE = Metric(_hw_m.HW_GPU_MEMORY_USAGE, "By", "updowncounter", "GPU memory used.")
HW_GPU_MEMORY_LIMIT = Metric(_hw_m.HW_GPU_MEMORY_LIMIT, "By", "updowncounter", "GPU memory size.")
HW_GPU_MEMORY_UTILIZATION = Metric(_hw_m.HW_GPU_MEMORY_UTILIZATION, "1", "gauge", "Fraction of GPU memory used.")
HW_POWER = Metric("hw.power", "W", "gauge", "Instantaneous power drawn.")
HW_ENERGY = Metric(_hw_m.HW_ENERGY, "J", "counter", "Energy consumed since the driver loaded.")
HW_TEMPERATURE = Metric("hw.temperature", "Cel", "gauge", "GPU temperature.")
HW_ERRORS = Metric(
    _hw_m.HW_ERRORS, "{error}", "counter",
    "Hardware errors by error.type: GPU (ECC, XID-style), NVLink and PCIe link, InfiniBand port.",
)
GPU_CLOCK = Metric("observatory.gpu.clock", "Hz", "gauge", "Current clock by observatory.gpu.clock.domain.")
GPU_CLOCK_EVENT = Metric(
    "observatory.gpu.clock_event", "1", "gauge", "1 while a clock-event (throttle) reason is active, by reason."
)
GPU_MEMORY_BANDWIDTH_UTILIZATION = Metric(
    "observatory.gpu.memory_bandwidth.utilization", "1", "gauge", "Fraction of time device memory was read or written."
)
GPU_PROCESS_MEMORY = Metric("observatory.gpu.process.memory.usage", "By", "gauge", "GPU memory used per process.")
GPU_READ_ERRORS = Metric(
    "observatory.gpu.read_errors", "{reading}", "counter", "NVML readings dropped because the call failed."
)

HW_TYPE_GPU: Final = "gpu"
HW_GPU_TASKS: Final = ("general", "encoder", "decoder")
GPU_CLOCK_DOMAINS: Final = ("graphics", "sm", "memory")
# NVML clock-event reasons in bit order (bit i of nvmlDeviceGetCurrentClocksEventReasons is reason i).
GPU_CLOCK_EVENT_REASONS: Final = (
    "gpu_idle",
    "applications_clocks_setting",
    "sw_power_cap",
    "hw_slowdown",
    "sync_boost",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
    "display_clock_setting",
)
HW_GPU_ERROR_TYPES: Final = ("ecc_corrected", "ecc_uncorrected", "xid")  # error.type values on hw.errors

# DCGM-exporter-compatible Prometheus series (opt-in, setting ``gpu_dcgm_names``): the names, types,
# units and labels of NVIDIA dcgm-exporter's default counters (etc/default-counters.csv), so DCGM
# dashboards work unchanged. Only the series the collector emits are listed. Name -> (type, help).
DCGM_SERIES: Final[dict[str, tuple[Literal["gauge", "counter"], str]]] = {
    "DCGM_FI_DEV_SM_CLOCK": ("gauge", "SM clock frequency (in MHz)."),
    "DCGM_FI_DEV_MEM_CLOCK": ("gauge", "Memory clock frequency (in MHz)."),
    "DCGM_FI_DEV_GPU_TEMP": ("gauge", "GPU temperature (in C)."),
    "DCGM_FI_DEV_POWER_USAGE": ("gauge", "Power draw (in W)."),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("counter", "Total energy consumption since boot (in mJ)."),
    "DCGM_FI_DEV_GPU_UTIL": ("gauge", "GPU utilization (in %)."),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("gauge", "Memory utilization (in %)."),
    "DCGM_FI_DEV_ENC_UTIL": ("gauge", "Encoder utilization (in %)."),
    "DCGM_FI_DEV_DEC_UTIL": ("gauge", "Decoder utilization (in %)."),
    "DCGM_FI_DEV_XID_ERRORS": ("gauge", "Value of the last XID error encountered."),
    "DCGM_FI_DEV_FB_FREE": ("gauge", "Framebuffer memory free (in MiB)."),
    "DCGM_FI_DEV_FB_USED": ("gauge", "Framebuffer memory used (in MiB)."),
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": ("counter", "Total number of single-bit volatile ECC errors."),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ("counter", "Total number of double-bit volatile ECC errors."),
}
DCGM_LABELS: Final = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname")
DCGM_MIG_LABELS: Final = ("GPU_I_PROFILE", "GPU_I_ID")  # added on a MIG instance's series

# --------------------------------------------------------------------------- pipeline (Prefect + MLflow)
PIPELINE_FLOW: Final = "observatory.pipeline.flow"
PIPELINE_DECISION: Final = "observatory.pipeline.decision"  # one of PIPELINE_DECISIONS_ALL
PIPELINE_OUTCOME: Final = "observatory.pipeline.outcome"  # completed | failed
PIPELINE_DECISIONS_ALL: Final = ("promoted", "rejected", "rolled_back", "inconclusive",
                                  "approved", "rejected_by_approver", "approval_timeout")  # the last 3: approval gate
SPAN_PIPELINE_DECISION: Final = "pipeline.decision"

PIPELINE_RUNS = Metric("observatory.pipeline.runs", "{run}", "counter", "Pipeline flow runs by flow and outcome.")
PIPELINE_REGISTRATIONS = Metric(
    "observatory.pipeline.registrations", "{version}", "counter", "Model versions registered."
)
PIPELINE_DECISIONS = Metric(
    "observatory.pipeline.decisions", "{decision}", "counter", "Promotion decisions by decision."
)
PIPELINE_LAST_PROMOTION = Metric(
    "observatory.pipeline.last_promotion", "s", "gauge", "Unix time of the last successful promotion."
)
EVAL_LOSS = Metric("observatory.eval.loss", "1", "gauge", "Held-out loss of a model version.")
EVAL_PERPLEXITY = Metric("observatory.eval.perplexity", "1", "gauge", "Held-out perplexity of a model version.")
EVAL_LATENCY_P95 = Metric("observatory.eval.latency.p95", "s", "gauge", "p95 pyfunc latency in evaluation.")
EVAL_LATENCY_P50 = Metric("observatory.eval.latency.p50", "s", "gauge", "Median pyfunc latency in evaluation.")
EVAL_GOLDEN_PASS_RATE = Metric(
    "observatory.eval.golden_pass_rate", "1", "gauge", "Share of golden prompts a model version passes."
)
PIPELINE_TRAIN_DURATION = Metric(
    "observatory.pipeline.train.duration", "s", "gauge", "Wall time of the last training run."
)
SPAN_PIPELINE_RUN: Final = "pipeline.run"  # our root span when Prefect's flow-run span is not recorded
PIPELINE_FROM_VERSION: Final = "observatory.pipeline.from_version"  # champion before a decision
PIPELINE_TO_VERSION: Final = "observatory.pipeline.to_version"  # the version decided about
PIPELINE_REASON: Final = "observatory.pipeline.reason"  # gate outcome in words (no content)

# Canary analysis (flows/canary.py): the challenger's live figures against the champion's, read from
# Prometheus; the guard watches a new champion after a promotion. Decisions go to PIPELINE_DECISIONS.
SPAN_CANARY_ANALYSIS: Final = "pipeline.canary.analysis"  # one per analysis step that decides
CANARY_VERDICT: Final = "observatory.pipeline.canary.verdict"
CANARY_VERDICTS: Final = ("pass", "fail", "inconclusive", "healthy", "breach")  # canary: 3 first; guard: 2 last
CANARY_ANALYSES = Metric(
    "observatory.pipeline.canary.analyses", "{analysis}", "counter",
    "Finished canary and guard analyses by flow (canary | guard) and verdict.",
)

# --------------------------------------------------------------------------- telemetry health
TELEMETRY_SIGNAL: Final = "observatory.telemetry.signal"  # traces | metrics | logs
TELEMETRY_BACKEND: Final = "observatory.telemetry.backend"
TELEMETRY_OUTCOME: Final = "observatory.telemetry.outcome"  # success | failure
TELEMETRY_EXPORTED = Metric(
    "observatory.telemetry.exported", "{item}", "counter", "Items handed to a backend, by signal, backend and outcome."
)
TELEMETRY_METRIC: Final = "observatory.telemetry.metric"  # the metric a series limit folded
TELEMETRY_DROP_REASON: Final = "observatory.telemetry.drop.reason"  # "queue_full" | "write_failed"
TELEMETRY_SERIES_OVERFLOW = Metric(
    "observatory.telemetry.series_overflow", "{measurement}", "counter",
    "Measurements folded into a metric's overflow series because it reached its series limit, by metric.",
)
TELEMETRY_DROPPED = Metric(
    "observatory.telemetry.dropped", "{item}", "counter",
    "Items dropped before export, by signal, backend and drop.reason (queue_full, write_failed).",
)

# --------------------------------------------------------------------------- interconnect (NVLink, PCIe, InfiniBand)
# Sampled on their own slow schedule (telemetry/_interconnect.py). GPU links carry the GPU's hw.id and
# hw.type=gpu; an InfiniBand port is hw.type=network with hw.id "<hca>/<port>". Errors go to hw.errors.
NETWORK_IO_DIRECTION: Final = "network.io.direction"  # "transmit" | "receive"
NETWORK_IO_DIRECTIONS: Final = ("transmit", "receive")
HW_TYPE_NETWORK: Final = "network"
GPU_LINK_TYPE: Final = "observatory.gpu.link.type"  # "nvlink" | "pcie" on hw.gpu.io
GPU_LINK_TYPES: Final = ("nvlink", "pcie")
GPU_NVLINK_LINK: Final = "observatory.gpu.nvlink.link"  # NVLink link index (0..17 on an H100/H200)
GPU_PCIE_LINK_BOUND: Final = "observatory.gpu.pcie.link.bound"  # "current" | "max"
GPU_PCIE_LINK_BOUNDS: Final = ("current", "max")
IB_DEVICE: Final = "observatory.infiniband.device"  # HCA name, e.g. "mlx5_0"
IB_PORT: Final = "observatory.infiniband.port"  # port number on the HCA
IB_LINK_LAYER: Final = "observatory.infiniband.link_layer"  # "InfiniBand" | "Ethernet" (RoCE)
IB_RATE: Final = "observatory.infiniband.rate"  # sysfs text on hw.network.up, e.g. "400 Gb/sec (4X NDR)"
INTERCONNECT_SOURCE: Final = "observatory.interconnect.source"  # NVML function or sysfs file of a failed read
# error.type values on hw.errors for GPU links (NVML error counters and the PCIe replay counter).
GPU_LINK_ERROR_TYPES: Final = ("nvlink_replay", "nvlink_recovery", "nvlink_crc_flit", "nvlink_crc_data", "pcie_replay")
# error.type values on hw.errors for an InfiniBand port: the sysfs counters/ and hw_counters/ files read.
IB_ERROR_TYPES: Final = (
    "symbol_error", "link_error_recovery", "link_downed", "port_rcv_errors", "port_rcv_remote_physical_errors",
    "port_rcv_switch_relay_errors", "port_xmit_discards", "port_xmit_constraint_errors",
    "port_rcv_constraint_errors", "local_link_integrity_errors", "excessive_buffer_overrun_errors",
    "VL15_dropped", "port_xmit_wait",
    "out_of_buffer", "out_of_sequence", "packet_seq_err", "local_ack_timeout_err", "rnr_nak_retry_err",
    "implied_nak_seq_err",
)

HW_GPU_IO = Metric(
    _hw_m.HW_GPU_IO, "By", "counter",
    "Bytes a GPU sent and received, by network.io.direction and link type (NVLink per link, PCIe).",
)
GPU_NVLINK_UP = Metric("observatory.gpu.nvlink.up", "1", "gauge", "1 while an NVLink link is active, 0 when down.")
GPU_PCIE_LINK_WIDTH = Metric(
    "observatory.gpu.pcie.link.width", "{lane}", "gauge", "PCIe link width, current and max (observatory.gpu.pcie.link.bound).",
)
GPU_PCIE_LINK_GENERATION = Metric(
    "observatory.gpu.pcie.link.generation", "1", "gauge",
    "PCIe link generation, current and max (the current one drops while the GPU idles).",
)
GPU_PCIE_LINK_DOWNTRAINED = Metric(
    "observatory.gpu.pcie.link.downtrained", "1", "gauge", "1 while the PCIe link runs at fewer lanes than its max.",
)
HW_NETWORK_IO = Metric(_hw_m.HW_NETWORK_IO, "By", "counter", "Bytes an InfiniBand port sent and received.")
HW_NETWORK_PACKETS = Metric(
    _hw_m.HW_NETWORK_PACKETS, "{packet}", "counter", "Packets an InfiniBand port sent and received."
)
HW_NETWORK_UP = Metric(
    _hw_m.HW_NETWORK_UP, "1", "updowncounter", "1 while an InfiniBand port is ACTIVE, else 0 (with its rate and link layer)."
)
INTERCONNECT_READ_ERRORS = Metric(
    "observatory.interconnect.read_errors", "{reading}", "counter",
    "Interconnect readings dropped because the NVML call or sysfs read failed, by function.",
)

# --------------------------------------------------------------------------- shadow traffic
# serving_hooks/backends/shadow.py: a share of live requests mirrored to the challenger after the
# champion's answer went out. Each side of a mirrored request (observatory.model.role) is measured the
# same way, as the gateway's client sees it, so the canary flow can judge them with its live rules.
SPAN_SHADOW: Final = "observatory.shadow"  # root of a mirror's own trace, linked to the user request's span
SHADOW: Final = "observatory.shadow"  # span attribute: true on every span of a mirrored call
SHADOW_MATCH: Final = "observatory.shadow.match"  # "exact" | "differs" (challenger text vs champion's)
SHADOW_MATCHES: Final = ("exact", "differs")
SHADOW_DROP_REASON: Final = "observatory.shadow.drop.reason"  # "queue_full" | "no_challenger"
SHADOW_DROP_REASONS: Final = ("queue_full", "no_challenger")
SHADOW_LENGTH_RATIO_BUCKETS: Final = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0)
SHADOW_REQUEST_DURATION = Metric(
    "observatory.shadow.request.duration", "s", "histogram",
    "Duration of each side of a mirrored request, by observatory.model.role/version and error.type.",
)
SHADOW_TIME_TO_FIRST_TOKEN = Metric(
    "observatory.shadow.time_to_first_token", "s", "histogram", "Time to the first token of each side (streams).",
)
SHADOW_TIME_PER_OUTPUT_TOKEN = Metric(
    "observatory.shadow.time_per_output_token", "s", "histogram", "Time per output token after the first, each side.",
)
SHADOW_OUTPUT_TOKENS = Metric(
    "observatory.shadow.output_tokens", "{token}", "counter", "Output tokens each side produced on mirrored requests.",
)
SHADOW_COMPARISONS = Metric(
    "observatory.shadow.comparisons", "{request}", "counter",
    "Mirrored requests both sides answered, by observatory.shadow.match (exact-match rate = exact / all).",
)
SHADOW_LENGTH_RATIO = Metric(
    "observatory.shadow.length_ratio", "1", "histogram",
    "Challenger output tokens over the champion's on the same request (1: same length).",
)
SHADOW_DROPPED = Metric(
    "observatory.shadow.dropped", "{request}", "counter",
    "Mirrors not sent to the challenger, by observatory.shadow.drop.reason (the user request is never affected).",
)

# --------------------------------------------------------------------------- model catalog
# serving_hooks/catalog.py and _catalog_router.py: the models the gateway serves (names and aliases,
# a closed set), their telemetry labels, fallbacks and reloads.
CATALOG_MODEL: Final = "observatory.catalog.model"  # the catalog entry (public name) a request named
CATALOG_LABEL_PREFIX: Final = "observatory.catalog.label."  # + an entry's label key (span attributes)
EVENT_FALLBACK: Final = "observatory.fallback"  # span event: the model's pool had no healthy replica
FALLBACK_MODEL: Final = "observatory.fallback.model"  # the fallback that served (span attribute, label)
CATALOG_RELOAD_OUTCOME: Final = "observatory.catalog.reload.outcome"
CATALOG_RELOAD_OUTCOMES: Final = ("ok", "invalid", "failed")  # failed: a new backend did not start
GATEWAY_FALLBACKS = Metric(
    "observatory.gateway.fallbacks", "{request}", "counter",
    "Requests served by a fallback because their model's pool had no healthy replica, by "
    "observatory.catalog.model and observatory.fallback.model.",
)
CATALOG_RELOADS = Metric(
    "observatory.catalog.reloads", "{reload}", "counter",
    "Model catalog reloads (SIGHUP or a changed file), by observatory.catalog.reload.outcome.",
)

# fleet (issue 16)
# serving_hooks/backends/pool.py: an upstream model served by a pool of replicas. Every label value is
# bounded: the pool is a catalog model, the replica its catalog-defined name, the outcome and state below.
FLEET_POOL: Final = "observatory.fleet.pool"  # the pool's model (catalog name)
FLEET_REPLICA: Final = "observatory.fleet.replica"  # the replica's catalog name
FLEET_OUTCOME: Final = "observatory.fleet.outcome"  # how one attempt on one replica ended
FLEET_OUTCOMES: Final = (
    "ok",             # answered (2xx), streams to their end
    "client_error",   # the replica answered 4xx (passed on, not retried, not held against it)
    "connect_error",  # never connected (refused, connect timeout): retried elsewhere
    "reset",          # connection reset before any response header: retried elsewhere
    "timeout",        # no response header within the read timeout (the replica may be working: not retried)
    "server_error",   # 5xx (502/503/504 retried elsewhere)
    "bad_status",     # a status that is neither 2xx, 4xx nor 5xx
    "answer_failed",  # headers came, then the body was malformed, cut or stalled
    "error",          # any other client error before the headers
    "cancelled",      # the caller left or the gateway stopped mid-attempt (not held against the replica)
)
FLEET_STATE: Final = "observatory.fleet.state"  # a replica's health state
FLEET_STATES: Final = (
    "healthy",    # takes requests
    "ejected",    # passive outlier ejection: consecutive failures, for a backoff that grows per ejection
    "unhealthy",  # active probes failed unhealthy_threshold times in a row
)
HTTP_REQUEST_RESEND_COUNT: Final = "http.request.resend_count"  # on a retry's attempt span (1 = first retry)
SPAN_FLEET_ATTEMPT: Final = "POST"  # one CLIENT span per attempt (HTTP client convention: the method)
EVENT_FLEET_RETRY: Final = "observatory.fleet.retry"  # on the GenAI span: an attempt failed, another replica next
EVENT_FLEET_EJECTED: Final = "observatory.fleet.ejected"  # on the attempt span whose failure ejected its replica
FLEET_EJECTION_SECONDS: Final = "observatory.fleet.ejection.seconds"  # on EVENT_FLEET_EJECTED: how long it is out
FLEET_REPLICA_OUTSTANDING = Metric(
    "observatory.fleet.replica.outstanding", "{request}", "updowncounter",
    "Requests in flight on each replica (streams until their end), by observatory.fleet.pool/replica.",
)
FLEET_REPLICA_REQUESTS = Metric(
    "observatory.fleet.replica.requests", "{request}", "counter",
    "Attempts on each replica by observatory.fleet.outcome (retries included: one per attempt).",
)
FLEET_REPLICA_DURATION = Metric(
    "observatory.fleet.replica.duration", "s", "histogram",
    "Duration of each attempt on a replica, to its answer's end (a stream's last byte), by outcome.",
)
FLEET_REPLICA_EJECTIONS = Metric(
    "observatory.fleet.replica.ejections", "{ejection}", "counter",
    "Passive outlier ejections of each replica, by the observatory.fleet.outcome that tipped it.",
)
FLEET_REPLICA_STATE = Metric(
    "observatory.fleet.replica.state", "1", "gauge",
    "1 for each replica's current observatory.fleet.state, 0 for the others (healthy replicas: sum of state=healthy).",
)
FLEET_RETRIES = Metric(
    "observatory.fleet.retries", "{retry}", "counter",
    "Attempts sent to another replica after a retryable failure, by pool and the outcome retried "
    "(retry ratio: this over the pool's first attempts).",
)
FLEET_RETRIES_DENIED = Metric(
    "observatory.fleet.retries.denied", "{retry}", "counter",
    "Retryable failures not retried because the pool-wide retry budget was spent, by pool.",
)
FLEET_UNAVAILABLE = Metric(
    "observatory.fleet.unavailable", "{request}", "counter",
    "Requests a pool refused with no replica able to take them (the catalog's fallback chain takes over).",
)

# ledger (issue 17)
# serving_hooks/ledger: one row per request, appended to a local spool (segment files, one os.write)
# and shipped in batches to the ledger store (SQLite or PostgreSQL). Label values: the closed sets below.
LEDGER_OUTCOME: Final = "observatory.ledger.outcome"  # a ledger row's outcome column (not a metric label)
LEDGER_OUTCOMES: Final = (
    "ok",         # answered in full
    "error",      # failed: a 5xx, or cut after its status went out
    "cancelled",  # the caller left before the response ended
    "rejected",   # refused before the model (rate limit, budget, scope): no tokens
)
LEDGER_DROP_REASON: Final = "observatory.ledger.reason"  # why a row was not written
LEDGER_DROP_REASONS: Final = (
    "spool_error",  # the spool could not take it (disk full, spool_max_mb reached, I/O error)
    "closed",       # submitted after the ledger closed
    "corrupt",      # a spool line that was not a row (a crash's unfinished last line): skipped by the shipper
)
LEDGER_ROWS_WRITTEN = Metric(
    "observatory.ledger.rows.written", "{row}", "counter",
    "Usage rows written to the local spool (durable across a gateway crash from then on).",
)
LEDGER_ROWS_SHIPPED = Metric(
    "observatory.ledger.rows.shipped", "{row}", "counter",
    "Usage rows shipped from the spool to the ledger store (a retried row counts once per shipment).",
)
LEDGER_ROWS_DROPPED = Metric(
    "observatory.ledger.rows.dropped", "{row}", "counter",
    "Usage rows that could not be written, by observatory.ledger.reason (lost: alert on any).",
)
LEDGER_SHIP_FAILURES = Metric(
    "observatory.ledger.ship.failures", "{batch}", "counter",
    "Batches the ledger store refused or could not be reached for (kept in the spool and retried).",
)
LEDGER_SPOOL_ROWS = Metric(
    "observatory.ledger.spool.rows", "{row}", "gauge",
    "Rows in the local spool not yet shipped to the ledger store.",
)
LEDGER_LAG = Metric(
    "observatory.ledger.lag", "s", "gauge",
    "Age of the oldest row in the spool not yet shipped (0 when the spool is empty).",
)

# budgets (issue 17)
# serving_hooks/tenants.py, prices.py and budgets.py: per-tenant limits and models, prices per catalog
# model, and budgets reserved before a call and settled after it in the shared store. Money is integer
# micro-units of budget_currency (1 USD = 1,000,000). Tenant labels: the tenants table's names (a closed
# set) and, for tenants on the default tier, at most BUDGET_TENANTS_TRACKED more per process.
REJECTION_BUDGET: Final = "budget"  # observatory.rejection.reason of a 429 insufficient_quota (beside REJECTION_REASONS)
BUDGET_FAILURE: Final = "observatory.budget.failure"  # "timeout" | "error": why the budget store failed
BUDGET_FAIL_MODE: Final = "observatory.budget.fail_mode"  # "open" (admitted unchecked) | "closed" (refused, 503)
BUDGET_FAIL_MODES: Final = ("open", "closed")
BUDGET_TENANTS_TRACKED: Final = 1000
BUDGET_SPENT = Metric(
    "observatory.budget.spent", "{micro}", "gauge",
    "What each tenant's budget has charged in its current period (open reservations included), in micro-units "
    "of budget_currency, as this process last read it from the store.",
)
BUDGET_LIMIT = Metric(
    "observatory.budget.limit", "{micro}", "gauge", "Each tenant's budget for its period, in micro-units.",
)
BUDGET_STORE_FAILURES = Metric(
    "observatory.gateway.budget.store_failures", "{request}", "counter",
    "Requests whose budget the store could not check (failed or timed out), by observatory.budget.failure and "
    "observatory.budget.fail_mode (open: admitted unchecked; closed: refused).",
)
TENANTS_RELOADS = Metric(
    "observatory.tenants.reloads", "{reload}", "counter",
    "Reloads of the tenants or prices file on change, by observatory.catalog.reload.outcome (ok | invalid).",
)

# usage and cost (issue 17)
# serving_hooks/budgets.py (Metering.settle): what each priced request cost, as the usage ledger records it
# (cost_micro), for tenants with or without a budget. Integer micro-units of the price's currency. Labels:
# observatory.tenant (the tenants table's names, and at most BUDGET_TENANTS_TRACKED tenants on the default
# tier per process; later ones are USAGE_TENANT_OTHER), observatory.catalog.model (the prices file's catalog
# names) and the currency.
USAGE_CURRENCY: Final = "observatory.usage.currency"  # ISO 4217 code of a price (prices_file currency)
USAGE_TENANT_OTHER: Final = "_other"  # observatory.tenant of default-tier tenants past BUDGET_TENANTS_TRACKED
USAGE_COST = Metric(
    "observatory.usage.cost", "{micro}", "counter",
    "What priced requests cost once settled (the usage ledger's cost_micro), in micro-units of "
    "observatory.usage.currency, by tenant and observatory.catalog.model.",
)

# GPU energy per generation (issue 17)
# telemetry/gpu_energy.py splits each GPU's NVML energy counter between the in-process generations open on
# it (by the tokens each made in a sample interval); the in-process backend adds each generation's share
# here. Labels: observatory.tenant (the gateway's tenant label, as on observatory.gateway.tokens, so
# J/token = rate of this / rate of the output tokens there), gen_ai.request.model and observatory.model.version.
GEN_AI_SERVER_ENERGY = Metric(
    "observatory.gen_ai.server.energy", "J", "counter",
    "GPU energy attributed to in-process generations, by tenant, gen_ai.request.model and observatory.model.version.",
)
GEN_AI_SERVER_GPU_TIME = Metric(
    "observatory.gen_ai.server.gpu.time", "s", "counter",
    "GPU-seconds attributed to in-process generations (each interval's seconds split like its energy), by tenant, "
    "gen_ai.request.model and observatory.model.version.",
)
GPU_ENERGY_IDLE = Metric(
    "observatory.gpu.energy.idle", "J", "counter",
    "GPU energy read while no in-process generation was open on the GPU (attributed to nobody), by hw.id.",
)

# serve --workers N (serving_hooks/workers.py): the one scrape of every worker labels each sample with
# the worker's index ("0".."N-1"), as Prometheus' own relabelling would name an instance.
WORKER: Final = "worker"

METRICS: Final[tuple[Metric, ...]] = tuple(v for v in list(globals().values()) if isinstance(v, Metric))
"""Every metric the project emits."""


def all_prometheus_series() -> dict[str, Metric]:
    """Map each Prometheus sample name a scrape can show to its metric."""
    return {series: m for m in METRICS for series in prometheus_series(m)}
