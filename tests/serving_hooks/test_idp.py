"""The development IdP: discovery, JWKS, client credentials, persisted keys, and its commands."""

from __future__ import annotations

import asyncio
import os
import stat
import sys

import httpx
import jwt
import pytest
from typer.testing import CliRunner

from gpt_observatory.commands.idp import app as idp_app
from gpt_observatory.serving_hooks.auth import Authenticator, AuthSettings
from gpt_observatory.serving_hooks.idp import DevIdP
from tests.components import free_port, start_process, stop_process, wait_http
from tests.serving_hooks.conftest import AUDIENCE, CLIENT

runner = CliRunner()


def test_discovery_names_the_issuer_and_the_jwks_holds_only_public_keys(dev_idp):
    discovery = httpx.get(dev_idp.issuer + "/.well-known/openid-configuration").json()
    assert discovery["issuer"] == dev_idp.issuer
    assert discovery["jwks_uri"].startswith(dev_idp.issuer)

    [key] = httpx.get(discovery["jwks_uri"]).json()["keys"]
    assert (key["kid"], key["alg"], key["use"], key["kty"]) == (dev_idp.current_kid, "RS256", "sig", "RSA")
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)


def test_client_credentials_issue_a_token_the_gateway_accepts(dev_idp):
    client_id, secret, tenant, _ = CLIENT
    response = httpx.post(dev_idp.issuer + "/token", data={"grant_type": "client_credentials", "scope": "inference"},
                          auth=(client_id, secret))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["token_type"], body["scope"]) == ("Bearer", "inference")
    assert response.headers["cache-control"] == "no-store"

    auth = Authenticator(AuthSettings(issuer=dev_idp.issuer, audience=AUDIENCE))
    principal = asyncio.run(auth.authenticate("Bearer " + body["access_token"], ["inference"]))
    assert (principal.tenant, principal.scopes) == (tenant, {"inference"})


@pytest.mark.parametrize(
    ("form", "basic", "status", "error"),
    [
        ({"grant_type": "client_credentials"}, (CLIENT[0], "wrong"), 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, ("nobody", "x"), 401, "invalid_client"),
        ({"grant_type": "password"}, CLIENT[:2], 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials", "scope": "root"}, CLIENT[:2], 400, "invalid_scope"),
        ({"grant_type": "client_credentials", "client_id": CLIENT[0], "client_secret": "wrong"}, None, 401,
         "invalid_client"),
    ],
    ids=["wrong secret", "unknown client", "other grant", "scope not allowed", "wrong secret in form"],
)
def test_the_token_endpoint_answers_oauth_errors(dev_idp, form, basic, status, error):
    response = httpx.post(dev_idp.issuer + "/token", data=form, auth=basic)
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert "access_token" not in response.json()


def test_client_secret_in_the_form_body_is_accepted(dev_idp):
    form = {"grant_type": "client_credentials", "client_id": CLIENT[0], "client_secret": CLIENT[1]}
    assert httpx.post(dev_idp.issuer + "/token", data=form).status_code == 200


def test_keys_persist_in_the_state_folder_private(tmp_path):
    with DevIdP(tmp_path) as first:
        kid, issuer = first.current_kid, first.issuer
    keys = tmp_path / "idp" / "keys.json"
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o600
    assert (tmp_path / "idp" / "issuer").read_text().strip() == issuer
    with DevIdP(tmp_path) as second:
        assert second.current_kid == kid


def test_only_loopback_is_served():
    with pytest.raises(ValueError, match="loopback"):
        DevIdP("/nonexistent", host="0.0.0.0")


def test_commands_serve_rotate_and_token(tmp_path):
    """``idp serve`` in its own process; ``idp rotate`` from another; ``idp token`` fetches a token."""
    port = free_port()
    state = tmp_path / "state"
    log = tmp_path / "idp.log"
    serve = [sys.executable, "-c", "from gpt_observatory.commands.idp import app; app()", "serve", "--port", str(port),
             "--state-dir", str(state), "--client", "demo:s3cret:acme:inference"]
    proc = start_process(serve, log)
    try:
        issuer = f"http://127.0.0.1:{port}"
        wait_http(issuer + "/jwks.json", timeout=30, proc=proc, log=log)
        assert (state / "idp" / "issuer").read_text().strip() == issuer
        before = {k["kid"] for k in httpx.get(issuer + "/jwks.json").json()["keys"]}

        rotated = runner.invoke(idp_app, ["rotate", "--state-dir", str(state)])
        assert rotated.exit_code == 0, rotated.output
        new_kid = rotated.stdout.strip()
        after = {k["kid"] for k in httpx.get(issuer + "/jwks.json").json()["keys"]}
        assert after == before | {new_kid}  # the running IdP picked the new key up

        result = runner.invoke(idp_app, ["token", "--client-id", "demo", "--client-secret", "s3cret",
                                         "--state-dir", str(state)])
        assert result.exit_code == 0, result.output
        token = result.stdout.strip().splitlines()[-1]
        auth = Authenticator(AuthSettings(issuer=issuer, audience=AUDIENCE))
        assert asyncio.run(auth.authenticate("Bearer " + token)).tenant == "acme"
        assert jwt.get_unverified_header(token)["kid"] == new_kid

        refused = runner.invoke(idp_app, ["token", "--client-id", "demo", "--client-secret", "nope",
                                          "--issuer", issuer])
        assert refused.exit_code == 1 and "invalid_client" in refused.output
    finally:
        stop_process(proc)
