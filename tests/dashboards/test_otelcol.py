"""The Collector configuration is consistent, and the check catches what otelcol would refuse."""

from __future__ import annotations

import copy

from gpt_observatory.dashboards.otelcol import CREDENTIAL_KEYS, collector_config, problems


def test_shipped_config_is_consistent():
    assert problems(collector_config()) == []


def test_every_pipeline_limits_memory_first_redacts_and_batches():
    pipelines = collector_config()["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics", "logs"}
    for p in pipelines.values():
        assert p["receivers"] == ["otlp"]
        assert p["processors"][0] == "memory_limiter" and p["processors"][-1] == "batch"
        assert "attributes/credentials" in p["processors"]
    deleted = {a["key"] for a in collector_config()["processors"]["attributes/credentials"]["actions"]}
    assert {"http.request.header.authorization", "http.request.header.cookie", "http.request.header.x-api-key"} <= deleted
    assert set(CREDENTIAL_KEYS) == deleted


def test_otlp_in_on_the_standard_ports():
    protocols = collector_config()["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")


def test_undefined_unused_and_misplaced_components_are_named():
    config = copy.deepcopy(collector_config())
    config["service"]["pipelines"]["traces"]["exporters"].append("otlp/jaeger")  # not defined
    config["exporters"]["debug"] = {}  # defined, used by nothing
    config["service"]["pipelines"]["logs"]["exporters"].append("prometheus")  # metrics only
    config["service"]["pipelines"]["metrics"]["processors"].reverse()  # memory_limiter not first
    found = problems(config)
    assert "service.pipelines.traces: exporter 'otlp/jaeger' is not defined under exporters" in found
    assert "exporters.debug: defined but used by no pipeline" in found
    assert "service.pipelines.logs: exporter 'prometheus' does not support logs" in found
    assert "service.pipelines.metrics: memory_limiter must be the first processor" in found
