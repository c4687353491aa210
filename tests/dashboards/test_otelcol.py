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


def test_the_file_exporter_option_writes_traces_and_logs_where_observatory_reads_them(tmp_path):
    from gpt_observatory.dashboards.otelcol import FILE_ROTATION
    from gpt_observatory.telemetry.reading import signal_files

    assert not any(e.startswith("file") for e in collector_config()["exporters"])  # off by default
    config = collector_config(files_dir="/var/lib/otelcol/", file_rotation={"max_megabytes": 10, "max_backups": 3})
    assert problems(config) == []
    pipelines = config["service"]["pipelines"]
    assert pipelines["traces"]["exporters"] == ["otlp/traces", "file/traces"]
    assert pipelines["logs"]["exporters"] == ["otlphttp/loki", "file/logs"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    traces = config["exporters"]["file/traces"]
    assert traces == {"path": "/var/lib/otelcol/traces.json", "format": "json", "flush_interval": "1s",
                      "rotation": {"max_megabytes": 10, "max_backups": 3}}
    assert collector_config(files_dir="/d")["exporters"]["file/logs"]["rotation"] == FILE_ROTATION

    # The files it leaves (the live one and a lumberjack backup) are what --source <files_dir> reads.
    line = '{"resourceSpans":[]}\n'
    for name in ("traces.json", "traces-2025-12-02T15-00-00.000.json"):
        (tmp_path / name).write_text(line)
    (tmp_path / "logs.json").write_text('{"resourceLogs":[]}\n')
    assert [p.name for p in signal_files(tmp_path, "traces")] == ["traces-2025-12-02T15-00-00.000.json", "traces.json"]
    assert [p.name for p in signal_files(tmp_path, "logs")] == ["logs.json"]
