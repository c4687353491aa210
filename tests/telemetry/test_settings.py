"""Settings precedence and errors that name the key."""

from __future__ import annotations

import pytest

from gpt_observatory import telemetry
from gpt_observatory.telemetry.settings import ConfigError, load


def test_explicit_beats_otel_beats_observatory_beats_toml_beats_default(monkeypatch, tmp_path):
    (tmp_path / "observatory.toml").write_text('[telemetry]\nservice_name = "from-toml"\nenvironment = "toml-env"\n'
                                               'log_level = "DEBUG"\n')
    assert load().service_name == "from-toml"
    monkeypatch.setenv("OBSERVATORY_SERVICE_NAME", "from-observatory-env")
    assert load().service_name == "from-observatory-env"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-otel-env")
    assert load().service_name == "from-otel-env"
    assert load(service_name="explicit").service_name == "explicit"
    s = load()
    assert s.environment == "toml-env" and s.log_level == "DEBUG" and s.sampler == "parentbased_always_on"


def test_standard_otel_variables_are_parsed(monkeypatch):
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=svc-from-attrs,team=ml")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jsonl, memory")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-a=1,x-b=2")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "1500")
    s = load()
    assert s.service_name == "svc-from-attrs"
    assert s.resource_attributes["team"] == "ml"
    assert s.traces_exporter == ["jsonl", "memory"]
    assert s.otlp_headers == {"x-a": "1", "x-b": "2"}
    assert (s.sampler, s.sampler_arg, s.metric_export_interval_ms) == ("traceidratio", 0.25, 1500)


def test_default_is_jsonl_and_an_otlp_endpoint_selects_otlp(monkeypatch):
    assert load().exporters("traces") == ["jsonl"]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    assert [load().exporters(s) for s in ("traces", "metrics", "logs")] == [["otlp"]] * 3
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    assert load().exporters("metrics") == []


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("OTEL_TRACES_SAMPLER_ARG", "1.5", "OTEL_TRACES_SAMPLER_ARG"),
        ("OTEL_TRACES_SAMPLER_ARG", "lots", "OTEL_TRACES_SAMPLER_ARG"),
        ("OTEL_TRACES_SAMPLER", "sometimes", "OTEL_TRACES_SAMPLER"),
        ("OTEL_EXPORTER_PROMETHEUS_PORT", "99999", "OTEL_EXPORTER_PROMETHEUS_PORT"),
        ("OBSERVATORY_PROMETHEUS_PORT", "http", "OBSERVATORY_PROMETHEUS_PORT"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon", "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ],
)
def test_bad_setting_fails_at_configure_naming_the_key(monkeypatch, env, value, named):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=named):
        telemetry.configure("bad")
    assert telemetry.current() is None


def test_unknown_backend_names_the_variable_and_the_group(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jsonl,zipkinish")
    with pytest.raises(ConfigError) as err:
        telemetry.configure("bad")
    msg = str(err.value)
    assert "OTEL_TRACES_EXPORTER" in msg and "zipkinish" in msg and "opentelemetry_traces_exporter" in msg
    assert "jsonl" in msg  # lists what is available


def test_backend_for_another_signal_only_says_so():
    with pytest.raises(ConfigError, match="exists for metrics only"):
        telemetry.configure("bad", traces_exporter=["pushgateway"])


def test_unknown_toml_key_is_named(tmp_path):
    (tmp_path / "observatory.toml").write_text("[telemetry]\nservise_name = 'typo'\n")
    with pytest.raises(ConfigError, match="servise_name"):
        load()


def test_bad_prometheus_port_in_use_fails_at_configure():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match="prometheus_port"):
            telemetry.configure("bad", metrics_exporter=["prometheus"], prometheus_port=port)
