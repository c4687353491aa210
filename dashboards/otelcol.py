"""OpenTelemetry Collector (``otelcol-contrib``) configuration and its consistency check.

OTLP in (gRPC 4317, HTTP 4318); memory_limiter first, credential attributes deleted, credential
values masked, batch last; out to Prometheus (metrics), an OTLP trace store (Tempo or Jaeger,
both speak OTLP) and Loki through its native OTLP endpoint (the contrib ``loki`` exporter is
deprecated and removed upstream). There is no ``otelcol`` binary here, so :func:`problems` is our
own check: every component a pipeline names is defined, every defined component is used, each
component type exists in otelcol-contrib and supports the pipeline's signal, memory_limiter runs
first. ``otelcol-contrib validate --config`` is the authoritative check where the binary exists.

Option, off in the committed config: ``collector_config(files_dir="/var/lib/otelcol")`` adds the
contrib ``file`` exporter to the traces and logs pipelines, beside the stores: OTLP JSON lines in
``<files_dir>/traces.json`` and ``<files_dir>/logs.json``, rotated by size (``FILE_ROTATION``: the
exporter's lumberjack rotation leaves ``traces-<time>.json`` backups). Point ``observatory trace`` and
``observatory logs`` at that folder with ``--source <files_dir>`` to read the collector's view of
the live system in a terminal; searches across days stay with the trace store and Loki.

Option, off in the committed config: ``collector_config(vllm_targets=("vllm:8001",))`` has the
Collector scrape vLLM's own ``/metrics`` (its ``prometheus`` receiver, job ``vllm``) into a
``metrics/vllm`` pipeline out through the same Prometheus exporter, for a deployment where Prometheus
reaches only the Collector; where Prometheus reaches vLLM, the ``vllm`` job of ``prometheus.yml`` does.
"""

from __future__ import annotations

from typing import Any, Final

from gpt_observatory.dashboards.scrape import VLLM_JOB

SIGNALS: Final = ("traces", "metrics", "logs")

# Component types used here (or commonly swapped in) and the signals otelcol-contrib supports for them.
KNOWN: Final[dict[str, dict[str, frozenset[str]]]] = {
    "receivers": {"otlp": frozenset(SIGNALS), "prometheus": frozenset({"metrics"})},
    "processors": {
        "memory_limiter": frozenset(SIGNALS), "batch": frozenset(SIGNALS), "attributes": frozenset(SIGNALS),
        "redaction": frozenset(SIGNALS), "resource": frozenset(SIGNALS), "transform": frozenset(SIGNALS),
        "filter": frozenset(SIGNALS), "resourcedetection": frozenset(SIGNALS),
    },
    "exporters": {
        "otlp": frozenset(SIGNALS), "otlphttp": frozenset(SIGNALS), "prometheus": frozenset({"metrics"}),
        "prometheusremotewrite": frozenset({"metrics"}), "debug": frozenset(SIGNALS), "file": frozenset(SIGNALS),
    },
    "extensions": {"health_check": frozenset(), "pprof": frozenset(), "zpages": frozenset()},
}
# Header names and attribute keys that carry credentials; deleted before anything leaves.
CREDENTIAL_KEYS: Final = (
    "http.request.header.authorization",
    "http.request.header.proxy-authorization",
    "http.request.header.cookie",
    "http.response.header.set-cookie",
    "http.request.header.x-api-key",
    "authorization",
    "cookie",
    "api_key",
    "api-key",
)
# Values shaped like credentials, masked wherever they appear (mirrors telemetry.redact).
CREDENTIAL_VALUES: Final = (
    r"(?i)bearer\s+[A-Za-z0-9._~+/=-]+",
    r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
    r"obs_[A-Za-z0-9_-]{16,}",
    r"sk-[A-Za-z0-9_-]{16,}",
)


# The file exporter's rotation (lumberjack): a new file past max_megabytes, backups kept by count and age.
FILE_ROTATION: Final = {"max_megabytes": 100, "max_days": 3, "max_backups": 10, "localtime": False}
FILE_SIGNALS: Final = ("traces", "logs")  # what `observatory trace` and `observatory logs` read


def file_exporters(files_dir: str, rotation: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``file/traces`` and ``file/logs``: OTLP JSON lines under ``files_dir``, rotated by size."""
    return {
        f"file/{signal}": {
            "path": f"{files_dir.rstrip('/')}/{signal}.json",
            "format": "json",
            "rotation": dict(FILE_ROTATION if rotation is None else rotation),
            "flush_interval": "1s",
        }
        for signal in FILE_SIGNALS
    }


def vllm_receiver(targets: list[str] | tuple[str, ...], interval: str = "15s") -> dict[str, Any]:
    """The ``prometheus`` receiver scraping vLLM's ``/metrics``: the job is ``vllm`` (its service.name,
    so the exporter labels the series ``job="vllm"`` as Prometheus's own scrape would)."""
    return {"config": {"scrape_configs": [{
        "job_name": VLLM_JOB, "scrape_interval": interval, "metrics_path": "/metrics",
        "static_configs": [{"targets": list(targets)}],
    }]}}


def collector_config(
    traces_endpoint: str = "tempo:4317",
    loki_endpoint: str = "http://loki:3100/otlp",
    prometheus_endpoint: str = "0.0.0.0:8889",
    files_dir: str | None = None,
    file_rotation: dict[str, Any] | None = None,
    vllm_targets: list[str] | tuple[str, ...] = (),
    vllm_interval: str = "15s",
) -> dict[str, Any]:
    """The Collector configuration (endpoints are placeholders for a compose/k8s deployment); with
    ``files_dir``, traces and logs are also written there by the ``file`` exporter; with
    ``vllm_targets``, the Collector scrapes those vLLM servers' metrics too."""
    config = _config(traces_endpoint, loki_endpoint, prometheus_endpoint)
    if vllm_targets:
        config["receivers"]["prometheus/vllm"] = vllm_receiver(vllm_targets, vllm_interval)
        config["service"]["pipelines"]["metrics/vllm"] = {
            "receivers": ["prometheus/vllm"], "processors": ["memory_limiter", "batch"], "exporters": ["prometheus"],
        }
    if files_dir is not None:
        config["exporters"].update(file_exporters(files_dir, file_rotation))
        for signal in FILE_SIGNALS:
            config["service"]["pipelines"][signal]["exporters"].append(f"file/{signal}")
    return config


def _config(traces_endpoint: str, loki_endpoint: str, prometheus_endpoint: str) -> dict[str, Any]:
    processors = ["memory_limiter", "attributes/credentials", "redaction/credentials", "batch"]
    return {
        "extensions": {"health_check": {"endpoint": "0.0.0.0:13133"}},
        "receivers": {
            "otlp": {"protocols": {"grpc": {"endpoint": "0.0.0.0:4317"}, "http": {"endpoint": "0.0.0.0:4318"}}},
        },
        "processors": {
            "memory_limiter": {"check_interval": "1s", "limit_percentage": 80, "spike_limit_percentage": 25},
            "attributes/credentials": {"actions": [{"key": k, "action": "delete"} for k in CREDENTIAL_KEYS]},
            "redaction/credentials": {
                "allow_all_keys": True, "blocked_values": list(CREDENTIAL_VALUES), "summary": "silent",
            },
            "batch": {"timeout": "5s", "send_batch_size": 8192, "send_batch_max_size": 16384},
        },
        "exporters": {
            # job/instance labels come from service.name/service.instance.id; the rest of the resource
            # lands on target_info, as with the in-process Prometheus backend.
            "prometheus": {"endpoint": prometheus_endpoint, "resource_to_telemetry_conversion": {"enabled": False}},
            "otlp/traces": {"endpoint": traces_endpoint, "tls": {"insecure": True}},
            "otlphttp/loki": {"endpoint": loki_endpoint},
        },
        "service": {
            "extensions": ["health_check"],
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": processors, "exporters": ["otlp/traces"]},
                "metrics": {"receivers": ["otlp"], "processors": processors, "exporters": ["prometheus"]},
                "logs": {"receivers": ["otlp"], "processors": processors, "exporters": ["otlphttp/loki"]},
            },
        },
    }


def problems(config: dict[str, Any]) -> list[str]:
    """What is inconsistent in a Collector configuration (empty when nothing is)."""
    found: list[str] = []
    service = config.get("service") or {}
    pipelines: dict[str, Any] = service.get("pipelines") or {}
    if not pipelines:
        found.append("service.pipelines: no pipeline defined")
    used: dict[str, set[str]] = {kind: set() for kind in ("receivers", "processors", "exporters")}
    for pname, pipeline in pipelines.items():
        signal = pname.split("/")[0]
        if signal not in SIGNALS:
            found.append(f"service.pipelines.{pname}: signal must be one of {', '.join(SIGNALS)}")
        for kind in used:
            ids = (pipeline or {}).get(kind) or []
            if kind != "processors" and not ids:
                found.append(f"service.pipelines.{pname}: no {kind}")
            for cid in ids:
                used[kind].add(cid)
                if cid not in (config.get(kind) or {}):
                    found.append(f"service.pipelines.{pname}: {kind[:-1]} {cid!r} is not defined under {kind}")
                elif signal in SIGNALS and signal not in KNOWN[kind].get(cid.split("/")[0], frozenset(SIGNALS)):
                    found.append(f"service.pipelines.{pname}: {kind[:-1]} {cid!r} does not support {signal}")
        procs = (pipeline or {}).get("processors") or []
        if procs and procs[0].split("/")[0] != "memory_limiter":
            found.append(f"service.pipelines.{pname}: memory_limiter must be the first processor")
    for kind, ids in used.items():
        for cid in config.get(kind) or {}:
            if cid.split("/")[0] not in KNOWN[kind]:
                found.append(f"{kind}.{cid}: unknown {kind[:-1]} type {cid.split('/')[0]!r} for otelcol-contrib")
            if cid not in ids:
                found.append(f"{kind}.{cid}: defined but used by no pipeline")
    for ext in service.get("extensions") or []:
        if ext not in (config.get("extensions") or {}):
            found.append(f"service.extensions: {ext!r} is not defined under extensions")
    for ext in config.get("extensions") or {}:
        if ext not in (service.get("extensions") or []):
            found.append(f"extensions.{ext}: defined but not enabled in service.extensions")
    return found
