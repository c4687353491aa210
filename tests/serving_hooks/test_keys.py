"""API keys: created by ``observatory keys``, stored hashed, verified by the Authenticator, revoked
while it runs."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time

import pytest
from typer.testing import CliRunner

from gpt_observatory.commands.keys import app as keys_app
from gpt_observatory.serving_hooks.apikeys import ApiKeyStore
from gpt_observatory.serving_hooks.auth import Authenticator, AuthError, AuthSettings, Principal

runner = CliRunner()


def authenticate(auth: Authenticator, key: str, scopes=()) -> Principal:
    return asyncio.run(auth.authenticate(f"Bearer {key}", scopes))


def refusal(auth: Authenticator, key: str, scopes=()) -> AuthError:
    with pytest.raises(AuthError) as info:
        authenticate(auth, key, scopes)
    return info.value


def cli(*args: str, input: str | None = None):
    result = runner.invoke(keys_app, list(args), input=input)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def key_file(tmp_path):
    return tmp_path / "keys" / "api-keys.json"


@pytest.fixture
def auth(key_file, otel) -> Authenticator:
    return Authenticator(AuthSettings(api_keys_file=key_file), tracer_provider=otel.tracer_provider,
                         meter_provider=otel.meter_provider)


def _after_recheck(auth: Authenticator) -> None:
    """A file change is seen within the store's recheck interval; wait that long."""
    time.sleep(auth.api_keys.recheck_interval_s + 0.05)


def test_create_prints_the_key_once_as_the_last_line_and_stores_only_its_hash(key_file, auth):
    result = cli("create", "--tenant", "acme", "--file", str(key_file), "--scopes", "inference,admin", "--name", "ci")
    key = result.stdout.strip().splitlines()[-1]

    assert key.startswith("obs_")
    stored = key_file.read_text()
    assert key not in stored and key.split("_")[-1] not in stored
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    _after_recheck(auth)
    principal = authenticate(auth, key, ["inference"])  # the running authenticator sees the new file
    assert (principal.method, principal.tenant, principal.scopes) == ("api_key", "acme", {"inference", "admin"})
    assert key not in cli("list", "--file", str(key_file)).stdout


def test_a_revoked_key_is_refused_without_restarting(key_file, auth, otel):
    key = cli("create", "--tenant", "acme", "--file", str(key_file)).stdout.strip().splitlines()[-1]
    other = cli("create", "--tenant", "globex", "--file", str(key_file)).stdout.strip().splitlines()[-1]
    assert authenticate(auth, key).tenant == "acme"
    key_id = key[4:16]

    cli("revoke", "--file", str(key_file), "--key-id", key_id)
    _after_recheck(auth)

    err = refusal(auth, key)
    assert (err.status, err.reason, err.method) == (401, "revoked", "api_key")
    assert authenticate(auth, other).tenant == "globex"
    listed = json.loads(cli("list", "--file", str(key_file), "--json").stdout)
    assert {r["key_id"]: r["revoked"] for r in listed} == {key_id: True, other[4:16]: False}
    spans = otel.spans()
    assert [s.attributes["observatory.auth.outcome"] for s in spans] == ["ok", "revoked", "ok"]
    assert all(key not in s.to_json() for s in spans)


def test_revoke_by_the_key_itself_read_from_stdin(key_file, auth):
    key = cli("create", "--tenant", "acme", "--file", str(key_file)).stdout.strip().splitlines()[-1]
    cli("revoke", "--file", str(key_file), "--key", "-", input=key + "\n")
    _after_recheck(auth)
    assert refusal(auth, key).reason == "revoked"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda key: "obs_" + "0" * 12 + "_" + key[17:], "unknown_key"),  # no such key id
        (lambda key: key[:17] + ("A" if key[17] != "A" else "B") + key[18:], "unknown_key"),  # wrong secret
        (lambda key: key[:-3], "malformed"),
        (lambda key: "obs_garbage", "malformed"),
    ],
    ids=["unknown id", "wrong secret", "truncated", "garbage"],
)
def test_keys_that_do_not_match_are_refused(key_file, auth, mutate, reason):
    key, _ = ApiKeyStore(key_file).create("acme")
    err = refusal(auth, mutate(key))
    assert (err.status, err.reason, err.method) == (401, reason, "api_key")
    assert mutate(key) not in str(err)


def test_a_key_without_the_scope_gets_403(key_file, auth):
    key, _ = ApiKeyStore(key_file).create("acme", ["inference"])
    err = refusal(auth, key, ["admin"])
    assert (err.status, err.reason, err.tenant) == (403, "insufficient_scope", "acme")


def test_no_key_file_configured_refuses_api_keys(key_file):
    key, _ = ApiKeyStore(key_file).create("acme")
    assert refusal(Authenticator(AuthSettings()), key).reason == "unknown_key"


def test_a_broken_rewrite_keeps_the_last_good_keys_and_a_deleted_file_none(key_file, auth):
    key, _ = ApiKeyStore(key_file).create("acme")
    assert authenticate(auth, key).tenant == "acme"

    key_file.write_text('{"version": 1, "keys": [')  # an editor mid-save
    _after_recheck(auth)
    assert authenticate(auth, key).tenant == "acme"

    key_file.unlink()
    _after_recheck(auth)
    assert refusal(auth, key).reason == "unknown_key"


def test_a_broken_file_fails_at_startup_naming_it(key_file):
    key_file.parent.mkdir(parents=True)
    key_file.write_text("not json")
    with pytest.raises(ValueError, match=str(key_file)):
        Authenticator(AuthSettings(api_keys_file=key_file))
    result = runner.invoke(keys_app, ["list", "--file", str(key_file)])
    assert result.exit_code != 0 and "not valid" in result.output


def test_create_validates_tenant_and_scopes(key_file):
    result = runner.invoke(keys_app, ["create", "--tenant", "bad tenant!", "--file", str(key_file)])
    assert result.exit_code != 0 and "tenant" in result.output
    result = runner.invoke(keys_app, ["create", "--tenant", "acme", "--file", str(key_file), "--scope", 'a"b'])
    assert result.exit_code != 0 and "scope" in result.output
