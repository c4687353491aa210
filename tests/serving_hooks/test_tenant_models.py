"""``GET /v1/models`` lists what the caller may call: its scopes, narrowed (never widened) by its entry in
the tenants table, by the same check the gateway refuses a request with (``Tenant.may_call_entry``):
for any globs, a listed model is never refused for the tenant's reason and an unlisted one always is
(real app on real uvicorn, real API keys, a real upstream)."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt_observatory.serving_hooks import tenants
from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.settings import load
from tests.serving_hooks.support import serve
from tests.serving_hooks.test_budgets import metered_app
from tests.serving_hooks.test_limits import CountingPeer

# name -> aliases; "tiny-llama" makes llama-1 a tiny-* entry by its alias (all its names listed and callable)
ENTRIES = {"tiny-a": ["small-a"], "tiny-b": [], "llama-1": ["tiny-llama"], "big": ["large"]}
NAMES = [n for name, aliases in ENTRIES.items() for n in (name, *aliases)]
TABLE = '''
[tiers.default]
models = ["big", "llama-*"]

[[tenants]]
name = "acme"
models = ["tiny-*"]
'''


@pytest.fixture(scope="module")
def peer():
    with CountingPeer(delay_s=0.0) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(peer, keyring, tmp_path_factory):
    """The metered app on a catalog of ENTRIES plus one that needs a scope nobody here holds."""
    root = tmp_path_factory.mktemp("tenant-models")
    catalog = root / "catalog.toml"
    catalog.write_text("".join(
        f'[[models]]\nname = "{name}"\nkind = "upstream"\nurl = "{peer.url}"\naliases = {aliases!r}\n'.replace("'", '"')
        for name, aliases in ENTRIES.items()
    ) + f'[[models]]\nname = "tiny-secret"\nkind = "upstream"\nurl = "{peer.url}"\nscope = "premium"\n')
    table = root / "tenants.toml"
    table.write_text(TABLE)
    app = metered_app(peer, keyring, tenants_file=table, catalog_file=catalog, requests_per_minute=1_000_000,
                      tokens_per_minute=1_000_000_000)
    with serve(app) as gw:
        yield app, gw


def listed(gw, key: str) -> list[str]:
    r = httpx.get(gw.v1 + "/models", headers={"authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200, r.text
    return [m["id"] for m in r.json()["data"]]


def refusal(gw, key: str, model: str) -> str | None:
    """The error code of a chat request for ``model`` (None: answered)."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r = httpx.post(gw.v1 + "/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=10)
    return None if r.status_code == 200 else r.json()["error"]["code"]


def test_a_tenant_with_tiny_globs_sees_only_those_and_the_default_tier_its_own(gateway, keyring):
    _, gw = gateway
    # acme: tiny-* (llama-1 by its alias); tiny-secret needs a scope acme lacks: the table does not widen
    assert listed(gw, keyring.acme) == ["tiny-a", "small-a", "tiny-b", "llama-1", "tiny-llama"]
    # globex is not in the table: the default tier's globs
    assert listed(gw, keyring.globex) == ["llama-1", "tiny-llama", "big", "large"]
    assert refusal(gw, keyring.acme, "big") == "model_not_allowed"
    assert refusal(gw, keyring.acme, "tiny-llama") is None and refusal(gw, keyring.globex, "large") is None
    assert refusal(gw, keyring.acme, "tiny-secret") == "model_not_found"  # the scope, not the table


def test_without_a_tenants_table_the_list_is_the_scopes_alone(peer, keyring):
    settings_ = load(backend="upstream", upstream_url=peer.url, model="n-model", upstream_models=["other"],
                     api_keys_file=keyring.path)
    with serve(create_app(settings_)) as gw:
        assert listed(gw, keyring.acme) == ["n-model", "other"]


GLOB = st.text(alphabet="tinyalbgre-*?[]!", min_size=1, max_size=8)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(globs=st.lists(GLOB, min_size=1, max_size=3))
def test_for_any_globs_the_list_is_exactly_what_the_gateway_admits(gateway, keyring, globs):
    app, gw = gateway
    app.metering.tenants = tenants.parse({"tenants": [{"name": "acme", "models": globs}]})  # served at once
    shown = set(listed(gw, keyring.acme))
    assert shown <= set(NAMES)
    for name in NAMES:
        code = refusal(gw, keyring.acme, name)
        if name in shown:
            assert code is None, (globs, name, code)
        else:
            assert code == "model_not_allowed", (globs, name, code)
