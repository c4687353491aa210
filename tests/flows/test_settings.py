"""Gate settings are validated before any registry change; an invalid one names its key."""

from __future__ import annotations

import uuid

import pytest

from gpt_observatory.flows.settings import load_settings
from gpt_observatory.flows.stores import client_for
from gpt_observatory.telemetry import ConfigError


def test_defaults_and_sources(monkeypatch, tmp_path) -> None:
    config = tmp_path / "observatory.toml"
    config.write_text("[pipeline]\nmin_improvement = 0.05\nsteps = 10\n")
    monkeypatch.setenv("OBSERVATORY_CONFIG", str(config))
    monkeypatch.setenv("OBSERVATORY_PIPELINE_STEPS", "12")
    settings = load_settings()
    assert settings.model_name == "tiny-gpt"
    assert settings.min_improvement == 0.05  # from the [pipeline] table
    assert settings.steps == 12  # the environment wins over the file
    assert settings.gates()["min_improvement"] == 0.05


def test_invalid_value_names_the_key_and_where_to_set_it(monkeypatch) -> None:
    monkeypatch.setenv("OBSERVATORY_PIPELINE_MIN_IMPROVEMENT", "-0.5")
    with pytest.raises(ConfigError, match=r"'min_improvement' \(set via OBSERVATORY_PIPELINE_MIN_IMPROVEMENT"):
        load_settings()


def test_invalid_toml_value_names_the_file(monkeypatch, tmp_path) -> None:
    config = tmp_path / "observatory.toml"
    config.write_text('[pipeline]\nmax_latency_regression = "lots"\n')
    monkeypatch.setenv("OBSERVATORY_CONFIG", str(config))
    with pytest.raises(ConfigError, match=rf"'max_latency_regression'.*{config}"):
        load_settings()


def test_unknown_and_inconsistent_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown pipeline setting 'min_improvment'"):
        load_settings(min_improvment=0.1)
    with pytest.raises(ConfigError, match=r"d_model \(60\) must be a multiple of n_head \(8\)"):
        load_settings(d_model=60, n_head=8)


def test_invalid_gate_fails_the_pipeline_before_any_registry_change(pg_models, monkeypatch) -> None:
    from gpt_observatory.flows.pipeline import pipeline
    from gpt_observatory.flows.promotion import promote

    model = f"invalid-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("OBSERVATORY_PIPELINE_MAX_LATENCY_REGRESSION", "-1")
    overrides = {k: v for k, v in pg_models.overrides(steps=5).items() if k != "max_latency_regression"}
    with pytest.raises(ConfigError, match="max_latency_regression"):
        pipeline(model_name=model, overrides=overrides)
    with pytest.raises(ConfigError, match="max_latency_regression"):
        promote(model_name=model, version="1", overrides={"tracking_uri": pg_models.uri})
    client = client_for(pg_models.uri)
    assert client.search_registered_models(f"name='{model}'") == []
    experiment = client.get_experiment_by_name("tiny-gpt")
    if experiment is not None:
        assert client.search_runs([experiment.experiment_id], f"attributes.run_name = 'train {model}'") == []
