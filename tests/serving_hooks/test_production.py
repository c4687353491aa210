"""Production mode: ``environment=production`` refuses each development default (naming its setting
and the variable to set) unless ``production_allow`` names it; the admin endpoints move to their own
listener or behind a bearer token; ``observatory serve`` runs both listeners and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from gpt_observatory import telemetry
from gpt_observatory.commands import serve as serve_command
from gpt_observatory.serving_hooks._auth_settings import AuthSettings
from gpt_observatory.serving_hooks.app import build_hooks, create_app, create_listeners
from gpt_observatory.serving_hooks.backends.base import ModelRouter
from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
from gpt_observatory.serving_hooks.inference import ModelInfo
from gpt_observatory.serving_hooks.production import check
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.settings import ConfigError
from gpt_observatory.telemetry.settings import load as telemetry_settings
from tests.components import free_port, start_process, stop_process, wait_http
from tests.serving_hooks.echo_model import EchoModel
from tests.serving_hooks.support import assert_no_secrets, serve, settle

REPO = Path(__file__).resolve().parents[2]
SALT = "a-secret-salt-of-this-deployment"
ADMIN_TOKEN = "admin-token-nobody-else-knows-4f2a"
ISSUER = "https://idp.example.com/realms/observatory"
ADMIN_PATHS = ("/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


def safe_serve(**changes):
    """Serve settings production accepts: a real issuer and an admin listener."""
    return load(**{"oidc_issuer": ISSUER, "audience": "observatory", "admin_port": 9465, **changes})


def auth_of(settings, **changes) -> AuthSettings:
    return AuthSettings.load(issuer=settings.oidc_issuer, audience=settings.audience,
                             api_keys_file=settings.api_keys_file, **{"subject_salt": SALT, **changes})


def refusal(settings, auth) -> str:
    with pytest.raises(ConfigError) as refused:
        check(settings, auth, telemetry_settings(environment="production"))
    return str(refused.value)


# ------------------------------------------------------------------ what production refuses
def test_production_starts_when_every_default_is_replaced():
    settings = safe_serve()
    check(settings, auth_of(settings), telemetry_settings(environment="production"))
    tokened = safe_serve(admin_port=None, admin_token=SecretStr(ADMIN_TOKEN))  # a token alone is enough
    check(tokened, auth_of(tokened), telemetry_settings(environment="production"))


def test_development_starts_with_every_default():
    settings = load(allow_anonymous=True, oidc_issuer="http://127.0.0.1:9400", audience="observatory")
    check(settings, AuthSettings.load(issuer=settings.oidc_issuer, audience="observatory"),
          telemetry_settings())


@pytest.mark.parametrize("issuer", ["http://127.0.0.1:9400", "http://localhost:9400/", "https://[::1]:8443/x"])
def test_the_development_idp_is_refused(issuer):
    settings = safe_serve(oidc_issuer=issuer)
    message = refusal(settings, auth_of(settings))
    assert "'oidc_issuer'" in message and "OBSERVATORY_SERVE_OIDC_ISSUER" in message
    assert "PRODUCTION_ALLOW=dev_idp" in message
    assert "subject_salt" not in message and "admin_port" not in message  # only what is wrong
    allowed = safe_serve(oidc_issuer=issuer, production_allow=["dev_idp"])
    check(allowed, auth_of(allowed), telemetry_settings(environment="production"))


def test_the_default_salt_is_refused():
    settings = safe_serve()
    default = AuthSettings.load(issuer=ISSUER, audience="observatory")
    message = refusal(settings, default)
    assert "'subject_salt'" in message and "OBSERVATORY_AUTH_SUBJECT_SALT" in message
    assert "oidc_issuer" not in message
    check(safe_serve(production_allow=["default_salt"]), default, telemetry_settings(environment="production"))


def test_anonymous_access_is_refused():
    settings = safe_serve(oidc_issuer=None, audience=None, allow_anonymous=True)
    message = refusal(settings, auth_of(settings))
    assert "'allow_anonymous'" in message and "OBSERVATORY_SERVE_ALLOW_ANONYMOUS" in message
    allowed = safe_serve(oidc_issuer=None, audience=None, allow_anonymous=True, production_allow=["anonymous"])
    check(allowed, auth_of(allowed), telemetry_settings(environment="production"))
    # allow_anonymous with a credential configured serves nobody anonymously: nothing to refuse
    guarded = safe_serve(allow_anonymous=True)
    check(guarded, auth_of(guarded), telemetry_settings(environment="production"))


def test_public_admin_endpoints_are_refused():
    settings = safe_serve(admin_port=None)
    message = refusal(settings, auth_of(settings))
    assert "'admin_port'" in message and "OBSERVATORY_SERVE_ADMIN_PORT" in message
    assert "OBSERVATORY_SERVE_ADMIN_TOKEN" in message
    allowed = safe_serve(admin_port=None, production_allow=["public_admin"])
    check(allowed, auth_of(allowed), telemetry_settings(environment="production"))


def test_every_refusal_is_listed_at_once_and_the_allow_list_is_closed():
    settings = load(allow_anonymous=True)
    message = refusal(settings, AuthSettings.load())
    for allowance in ("default_salt", "anonymous", "public_admin"):
        assert f"PRODUCTION_ALLOW={allowance}" in message
    everything = load(allow_anonymous=True, production_allow=["default_salt", "anonymous", "public_admin"])
    check(everything, AuthSettings.load(), telemetry_settings(environment="production"))

    typo = safe_serve(production_allow=["dev-idp"])
    with pytest.raises(ConfigError, match=r"production_allow.*dev-idp.*accepted: dev_idp, default_salt"):
        check(typo, auth_of(typo), telemetry_settings())  # refused in development too


def test_production_is_also_read_from_the_resource_attributes(monkeypatch):
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=production")
    with pytest.raises(ConfigError, match="environment=production refuses"):
        create_app(load(allow_anonymous=True))


def test_create_app_refuses_before_anything_is_built(monkeypatch):
    monkeypatch.setenv("OBSERVATORY_ENVIRONMENT", "production")
    monkeypatch.setenv("OBSERVATORY_AUTH_SUBJECT_SALT", SALT)
    with pytest.raises(ConfigError, match="'allow_anonymous'"):
        create_app(load(allow_anonymous=True, admin_port=9465))


def test_the_serve_command_refuses_naming_every_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("OBSERVATORY_ENVIRONMENT", "production")
    monkeypatch.setenv("OBSERVATORY_SERVE_ADMIN_TOKEN", ADMIN_TOKEN)
    port = free_port()
    result = CliRunner().invoke(serve_command.app, ["--allow-anonymous", "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert "'subject_salt'" in result.output and "'allow_anonymous'" in result.output
    assert "admin_port" not in result.output  # the token makes the admin endpoints private
    assert ADMIN_TOKEN not in result.output
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")  # nothing listened


# ------------------------------------------------------------------ the admin listener
def listeners_of(settings, keyring):
    backend = InProcessBackend(
        build_hooks(settings), "tiny-gpt", model=EchoModel(), info=ModelInfo("tiny-gpt", "3", "champion", "champion")
    )
    return create_listeners(settings.model_copy(update={"api_keys_file": keyring.path}),
                            router=ModelRouter({"champion": backend}))


@pytest.fixture
def prometheus_telemetry():
    return telemetry.configure(
        "observatory-gateway-tests", traces_exporter=["memory"], metrics_exporter=["memory", "prometheus"],
        logs_exporter=["memory"], prometheus_serve=False, gpu_enabled=False,
    )


def test_the_admin_listener_serves_metrics_and_docs_and_the_api_port_does_not(prometheus_telemetry, keyring):
    listeners = listeners_of(load(admin_port=0), keyring)
    assert listeners.admin is not None
    with serve(listeners.api) as api, serve(listeners.admin) as admin:
        models = httpx.get(api.v1 + "/models", headers={"authorization": f"Bearer {keyring.acme}"})
        assert models.status_code == 200
        settle(prometheus_telemetry)
        for path in ADMIN_PATHS:
            assert httpx.get(api.url + path).status_code == 404, path
            assert httpx.get(admin.url + path).status_code == 200, path
        for path in ("/healthz", "/readyz"):
            assert httpx.get(api.url + path).status_code == 200, path
            assert httpx.get(admin.url + path).status_code == 404, path
        scrape = httpx.get(admin.url + "/metrics")
        document = httpx.get(admin.url + "/openapi.json").json()
        docs = httpx.get(admin.url + "/docs").text
    assert scrape.headers["content-type"].startswith("text/plain")
    assert f"\n{names.prometheus_series(names.GATEWAY_REQUESTS)[0]}{{" in scrape.text
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(document["paths"])  # the API's
    assert "/metrics" not in document["paths"] and "/openapi.json" in docs


def test_the_admin_token_is_required_on_the_admin_listener(memory_telemetry, keyring):
    listeners = listeners_of(load(admin_port=0, admin_token=SecretStr(ADMIN_TOKEN)), keyring)
    refused = []
    with serve(listeners.api) as api, serve(listeners.admin) as admin:
        for path in ADMIN_PATHS:
            assert httpx.get(admin.url + path, headers=bearer(ADMIN_TOKEN)).status_code == 200, path
            for headers in wrong_credentials(keyring):
                refused.append(httpx.get(admin.url + path, headers=headers))
        assert httpx.get(api.url + "/healthz").status_code == 200  # the probes need nothing
    assert {r.status_code for r in refused} == {401}
    error = refused[0].json()["error"]
    assert error["type"] == "authentication_error" and "OBSERVATORY_SERVE_ADMIN_TOKEN" in error["message"]
    assert refused[0].headers["www-authenticate"].startswith("Bearer")
    assert not [r for r in refused if ADMIN_TOKEN[:8] in r.text + str(r.headers)]  # never echoed


def test_without_an_admin_listener_the_token_guards_the_admin_paths_on_the_api_port(memory_telemetry, keyring):
    listeners = listeners_of(load(admin_token=SecretStr(ADMIN_TOKEN)), keyring)
    assert listeners.admin is None
    with serve(listeners.api) as api:
        for path in ADMIN_PATHS:
            assert httpx.get(api.url + path, headers=bearer(ADMIN_TOKEN)).status_code == 200, path
            for headers in wrong_credentials(keyring):
                assert httpx.get(api.url + path, headers=headers).status_code == 401, (path, headers)
        assert httpx.get(api.v1 + "/models", headers=bearer(keyring.acme)).status_code == 200
        assert httpx.get(api.v1 + "/models", headers=bearer(ADMIN_TOKEN)).status_code == 401  # not a caller's key
        assert httpx.get(api.url + "/readyz").status_code == 200


def test_an_empty_admin_token_is_refused(keyring):
    with pytest.raises(ConfigError, match=r"admin_token.*empty"):
        listeners_of(load(admin_port=0, admin_token=SecretStr("")), keyring)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def wrong_credentials(keyring) -> list[dict | list]:
    return [
        {}, bearer(ADMIN_TOKEN[:-1]), bearer(ADMIN_TOKEN + "x"), bearer(keyring.acme),
        {"authorization": f"Basic {ADMIN_TOKEN}"}, {"authorization": ADMIN_TOKEN},
        [("authorization", f"Bearer {ADMIN_TOKEN}"), ("authorization", f"Bearer {ADMIN_TOKEN}")],
    ]


# ------------------------------------------------------------------ observatory serve, both listeners
def test_serve_answers_on_both_ports_and_exits_on_sigterm(tmp_path, upstream_peer, keyring):
    port, admin_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    graceful = 5.0
    proc = start_process(
        [sys.executable, "-m", "gpt_observatory.commands.serve", "--backend", "upstream", "--upstream-url",
         upstream_peer.url, "--port", str(port), "--admin-port", str(admin_port), "--api-keys-file",
         str(keyring.path), "--graceful-timeout-s", str(graceful), "--upstream-models", "delay-1"],
        log, cwd=tmp_path, env={
            "OBSERVATORY_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(REPO),
            "OBSERVATORY_ENVIRONMENT": "production", "OBSERVATORY_AUTH_SUBJECT_SALT": SALT,
            "OBSERVATORY_SERVE_ADMIN_TOKEN": ADMIN_TOKEN,
        },
    )
    api, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    try:
        wait_http(api + "/healthz", timeout=60, proc=proc, log=log)
        body = {"model": "tiny-gpt", "messages": [{"role": "user", "content": "hi"}]}
        chat = httpx.post(api + "/v1/chat/completions", json=body, headers=bearer(keyring.acme), timeout=30)
        assert chat.status_code == 200, log.read_text()[-2000:]
        assert httpx.get(api + "/metrics").status_code == 404
        assert httpx.get(api + "/openapi.json").status_code == 404
        assert httpx.get(admin + "/metrics").status_code == 401
        scrape = httpx.get(admin + "/metrics", headers=bearer(ADMIN_TOKEN))
        assert scrape.status_code == 200 and names.prometheus_series(names.GATEWAY_REQUESTS)[0] in scrape.text
        assert httpx.get(admin + "/docs", headers=bearer(ADMIN_TOKEN)).status_code == 200
        assert httpx.get(admin + "/healthz", headers=bearer(ADMIN_TOKEN)).status_code == 404  # probes: API port

        in_flight: dict = {}

        def slow_call() -> None:
            slow = {**body, "model": "delay-1"}  # the upstream peer answers it after 1 s
            in_flight["r"] = httpx.post(api + "/v1/chat/completions", json=slow, headers=bearer(keyring.acme),
                                        timeout=30)

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(0.4)
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(graceful + 25) == 0
        took = time.monotonic() - started
        caller.join(30)
    finally:
        stop_process(proc)
    assert in_flight["r"].status_code == 200  # finished, not cut by the shutdown
    print(f"serve with an admin listener exited {took:.2f} s after SIGTERM")
    assert took < graceful + 10  # the graceful timeout, plus telemetry's flush, with slack for a loaded machine
    for url in (api, admin):
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz")
    assert_no_secrets(log.read_text(), [ADMIN_TOKEN, keyring.acme])
