"""``prometheus.yml``: scrape the gateway, the GPU collector, the Pushgateway, the Collector and a
vLLM upstream's own ``/metrics``."""

from __future__ import annotations

from typing import Any, Final

from gpt_observatory.dashboards import events

GATEWAY_JOB: Final = "observatory-gateway"  # = the gateway's default service.name
GPU_JOB: Final = "observatory-gpu"  # processes with the telemetry `prometheus` backend (GPU collector)
PUSHGATEWAY_JOB: Final = "pushgateway"  # batch flow runs push here; their own job label is kept
COLLECTOR_JOB: Final = "otel-collector"  # the Collector's Prometheus exporter (OTLP-fed metrics)
VLLM_JOB: Final = "vllm"  # a vLLM upstream's own metrics (its API port; 8001 as in the README's examples)
RULE_FILE: Final = "alerts.yml"
VLLM_SCRAPED: Final = events.VLLM_SCRAPED


def scrape_config(
    gateway: list[str] | tuple[str, ...] = ("127.0.0.1:8000",),
    gpu: list[str] | tuple[str, ...] = ("127.0.0.1:9464",),
    pushgateway: list[str] | tuple[str, ...] = ("127.0.0.1:9091",),
    collector: list[str] | tuple[str, ...] = ("127.0.0.1:8889",),
    vllm: list[str] | tuple[str, ...] = ("127.0.0.1:8001",),
    interval: str = "15s",
    rule_files: tuple[str, ...] = (RULE_FILE,),
) -> dict[str, Any]:
    """The Prometheus configuration; defaults are the components' default ports on one host.
    A job with no targets is left out."""
    jobs: list[dict[str, Any]] = []

    def job(name: str, targets: list[str] | tuple[str, ...], **extra: Any) -> None:
        if targets:
            jobs.append({"job_name": name, **extra, "static_configs": [{"targets": list(targets)}]})

    job(GATEWAY_JOB, gateway, metrics_path="/metrics")
    job(GPU_JOB, gpu, metrics_path="/metrics")
    # Pushed series carry the pushing job's own job/instance labels; honor_labels keeps them.
    job(PUSHGATEWAY_JOB, pushgateway, honor_labels=True)
    # The Collector's exporter sets job/instance from each resource's service.name/instance id.
    job(COLLECTOR_JOB, collector, honor_labels=True)
    # vLLM serves its metrics on the API port, beside /v1; they carry its own model_name label.
    job(VLLM_JOB, vllm, metrics_path="/metrics")
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": list(rule_files),
        "scrape_configs": jobs,
    }
