"""``observatory serve``'s options are :class:`ServeSettings`' fields, named like them, with the
old spellings still accepted; a given option wins over the environment and the config file,
which win over the defaults."""

from __future__ import annotations

import os

import pytest
import typer.main
from pydantic import SecretStr
from typer.testing import CliRunner

from gpt_observatory.commands import serve as command
from gpt_observatory.serving_hooks import settings as serve_settings
from gpt_observatory.serving_hooks.settings import ServeSettings
from gpt_observatory.telemetry.settings import ConfigError

runner = CliRunner()


def options() -> dict[str, set[str]]:
    """Parameter name -> its option strings, as click sees the command."""
    click_command = typer.main.get_command(command.app)
    return {p.name: {*p.opts, *p.secondary_opts} for p in click_command.params if p.name}


def test_every_setting_but_a_secret_is_an_option_named_like_it():
    built = options()
    for name, field in ServeSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation == SecretStr | None:
            assert name not in built  # a command line is visible to every user of the machine
        else:
            assert flag in built[name], name


@pytest.mark.parametrize(("old", "setting"), [
    ("--rpm", "requests_per_minute"), ("--tpm", "tokens_per_minute"), ("--poll-interval", "poll_interval_s"),
    ("--canary-tenant", "canary_tenants"),
    ("--upstream-timeout", "upstream_timeout_s"), ("--graceful-timeout", "graceful_timeout_s"),
])
def test_the_old_spellings_still_set_their_settings(old, setting):
    assert old in options()[setting]


@pytest.fixture
def loaded(monkeypatch, tmp_path):
    """Runs the command up to its settings (then stops it before anything starts); the settings it built."""
    monkeypatch.chdir(tmp_path)  # no observatory.toml
    monkeypatch.delenv("OBSERVATORY_CONFIG", raising=False)
    for var in [v for v in os.environ if v.startswith("OBSERVATORY_SERVE_")]:
        monkeypatch.delenv(var)
    built: list[ServeSettings] = []
    real = serve_settings.load

    def load(**overrides):
        built.append(real(**overrides))
        raise ConfigError("stopped by the test")

    monkeypatch.setattr(serve_settings, "load", load)

    def run(*args: str) -> ServeSettings:
        result = runner.invoke(command.app, list(args))
        assert result.exit_code == 2 and "stopped by the test" in result.output, result.output
        return built[-1]

    return run


def test_an_option_given_wins_over_the_environment_which_wins_over_the_default(loaded, monkeypatch):
    monkeypatch.setenv("OBSERVATORY_SERVE_REQUESTS_PER_MINUTE", "9")
    monkeypatch.setenv("OBSERVATORY_SERVE_CANARY_TENANTS", "x,y")
    monkeypatch.setenv("OBSERVATORY_SERVE_ALLOW_ANONYMOUS", "true")

    from_env = loaded()
    assert (from_env.requests_per_minute, from_env.canary_tenants, from_env.allow_anonymous) == (9, ["x", "y"], True)
    assert from_env.generation_threads == 8 and from_env.canary_sticky == "none"  # defaults

    given = loaded("--rpm", "11", "--canary-tenant", "a", "--canary-tenant", "b", "--no-allow-anonymous",
                   "--generation-threads", "3", "--canary-sticky", "tenant", "--poll-interval-s", "0.5")
    assert (given.requests_per_minute, given.canary_tenants, given.allow_anonymous) == (11, ["a", "b"], False)
    assert (given.generation_threads, given.canary_sticky, given.poll_interval_s) == (3, "tenant", 0.5)


def test_a_bad_value_is_refused_naming_the_option():
    result = runner.invoke(command.app, ["--canary-sticky", "always"])
    assert result.exit_code == 2 and "--canary-sticky" in result.output


def test_the_admin_listener_needs_a_port_of_its_own(monkeypatch):
    monkeypatch.setenv("OBSERVATORY_SERVE_ALLOW_ANONYMOUS", "true")
    result = runner.invoke(command.app, ["--port", "8123", "--admin-port", "8123"])
    assert result.exit_code == 2 and "admin_port (8123) must differ from port" in result.output, result.output
