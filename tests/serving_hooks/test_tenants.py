"""The tenants table (serving_hooks.tenants): tiers and defaults, allowed models by glob, budgets' periods,
errors that name the entry, reloads; and the gateway holding each tenant to it (403s, per-tenant RPM),
with the IdP's scopes still required."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime

import httpx
import pytest

from gpt_observatory.serving_hooks import tenants
from gpt_observatory.serving_hooks.tenants import Budget, TenantsReloader
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.settings import ConfigError
from tests.serving_hooks.support import point_value, serve, settle
from tests.serving_hooks.test_budgets import metered_app
from tests.serving_hooks.test_limits import CountingPeer


@pytest.fixture
def peer():
    """A real OpenAI-compatible upstream whose usage is all a request declared (5 prompt tokens + n x max_tokens)."""
    with CountingPeer() as running:
        yield running


TABLE = '''
[tiers.default]
requests_per_minute = 5
models = ["n-*"]

[tiers.gold]
requests_per_minute = 100
budget = { amount = "10", period = "month" }

[[tenants]]
name = "acme"
tier = "gold"
models = ["n-model", "llama-*"]
labels = { team = "search" }

[[tenants]]
name = "pilot"
requests_per_minute = 2
budget = { amount = "1.5", period = "window", starts = 2026-12-01T00:00:00Z, ends = 2027-01-01T00:00:00Z }
'''


def test_a_table_gives_tenants_their_tier_overrides_and_unknown_tenants_the_default():
    import tomllib

    table = tenants.parse(tomllib.loads(TABLE))
    acme, pilot, other = table.get("acme"), table.get("pilot"), table.get("someone")
    assert (acme.requests_per_minute, acme.budget, acme.labels) == (100, Budget(10_000_000, "month"), {"team": "search"})
    assert acme.may_call("n-model") and acme.may_call("llama-70b") and not acme.may_call("n-other")
    assert pilot.requests_per_minute == 2 and pilot.may_call("anything")  # no tier: every model
    assert pilot.budget.amount_micro == 1_500_000
    assert other.known is False and other.requests_per_minute == 5 and other.may_call("n-x") and not other.may_call("x")
    assert tenants.parse(tomllib.loads(TABLE), refuse_unknown=True).get("someone") is None
    assert tenants.parse(tomllib.loads(TABLE), default_tier="gold").get("x").requests_per_minute == 100


def test_budget_periods_are_utc_days_months_and_one_window():
    at = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert Budget(1, "day").window(at) == (datetime(2026, 12, 31, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert Budget(1, "month").window(at) == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert Budget(1, "month").window(datetime(2027, 2, 10, tzinfo=UTC))[1] == datetime(2027, 3, 1, tzinfo=UTC)
    window = Budget(1, "window", datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert window.window(at) == (window.starts, window.ends)
    assert window.window(datetime(2027, 1, 1, tzinfo=UTC)) is None


@pytest.mark.parametrize(("data", "message"), [
    ({"tenants": [{"name": "a", "tier": "gold"}]}, "[[tenants]] #1 ('a'): tier 'gold' is not declared"),
    ({"tenants": [{"name": "a"}, {"name": "a"}]}, "#2 ('a'): the tenant is listed twice"),
    ({"tenants": [{"name": "a", "budget": {"amount": "1", "period": "week"}}]}, "budget.period must be"),
    ({"tenants": [{"name": "a", "budget": {"amount": "1", "period": "window"}}]}, "budget.starts: a window needs"),
    ({"tenants": [{"name": "a", "requests_per_minute": 0}]}, "requests_per_minute must be an integer"),
    ({"tenants": [{"name": "a", "models": "n-*"}]}, "models must be a list"),
    ({"tenants": [{"name": "a", "labels": {"Team": "x"}}]}, "labels must map lower-case keys"),
    ({"tenants": [{"name": "a", "rpm": 1}]}, "unknown key(s) rpm"),
    ({"tiers": {"gold": {"name": "x"}}}, "[tiers.gold]: unknown key(s) name"),
    ({"tenant": []}, "unknown top-level key(s) tenant"),
])
def test_a_bad_table_names_the_entry_and_the_fault(data, message):
    with pytest.raises(ConfigError) as raised:
        tenants.parse(data, source="t.toml")
    assert message in str(raised.value) and str(raised.value).startswith("t.toml")


def test_a_changed_file_is_served_and_a_broken_one_keeps_the_table(tmp_path):
    path = tmp_path / "tenants.toml"
    path.write_text(TABLE)
    served = [tenants.load(path)]
    reloader = TenantsReloader({path: (tenants.load, served.append)}, poll_s=0.02)

    async def scenario() -> None:
        await reloader.start()
        try:
            path.write_text(TABLE.replace("requests_per_minute = 2", "requests_per_minute = 3"))
            os.utime(path, ns=(1, 1))  # a new identity even within the clock's resolution
            while len(served) < 2:
                await asyncio.sleep(0.02)
            path.write_text("[[tenants]\n")  # not TOML
            assert await reloader.reload(path) == "invalid"
        finally:
            await reloader.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert len(served) == 2 and served[1].get("pilot").requests_per_minute == 3


def _tenants_file(tmp_path, text: str):
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    return path


def test_the_gateway_holds_each_tenant_to_its_models_and_rpm_and_refuses_unknown_ones(
        tmp_path, memory_telemetry, keyring, peer):
    path = _tenants_file(tmp_path, '''
[[tenants]]
name = "acme"
requests_per_minute = 3
models = ["n-*"]
''')
    body = {"model": "n-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    acme, globex = {"authorization": f"Bearer {keyring.acme}"}, {"authorization": f"Bearer {keyring.globex}"}
    catalog = tmp_path / "catalog.toml"
    catalog.write_text("".join(f'[[models]]\nname = "{m}"\nkind = "upstream"\nurl = "{peer.url}"\n'
                               for m in ("n-model", "other-model")))
    app = metered_app(peer, keyring, tenants_file=path, refuse_unknown_tenants=True, catalog_file=catalog)
    with serve(app) as gw:
        chat = gw.v1 + "/chat/completions"
        served = [httpx.post(chat, json=body, headers=acme).status_code for _ in range(3)]
        limited = httpx.post(chat, json=body, headers=acme)
        other = httpx.post(chat, json={**body, "model": "other-model"}, headers=acme)
        unknown = httpx.post(chat, json=body, headers=globex)
        settle(memory_telemetry)
    assert served == [200] * 3 and peer.calls == 3
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert other.status_code == 403 and other.json()["error"]["code"] == "model_not_allowed"
    assert "may not call model 'other-model'" in other.json()["error"]["message"]
    assert unknown.status_code == 403 and unknown.json()["error"]["code"] == "unknown_tenant"
    rejected = memory_telemetry.memory.metrics()[names.GATEWAY_REJECTIONS.name]
    assert point_value(rejected, **{names.REJECTION_REASON: "forbidden"}) == 2


def test_the_table_narrows_the_idp_scopes_never_widens_them(tmp_path, memory_telemetry, keyring, peer,
                                                             monkeypatch):
    """globex's key has no scope; the model needs 'inference': a table allowing globex every model does
    not let it in, and acme (which holds the scope) is still held to the table."""
    monkeypatch.setenv("OBSERVATORY_AUTH_MODEL_SCOPES", '{"*": ["inference"]}')
    path = _tenants_file(tmp_path, '''
[[tenants]]
name = "globex"
models = ["*"]
[[tenants]]
name = "acme"
models = ["nothing-*"]
''')
    body = {"model": "n-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with serve(metered_app(peer, keyring, tenants_file=path)) as gw:
        globex = httpx.post(gw.v1 + "/chat/completions", json=body, headers={"authorization": f"Bearer {keyring.globex}"})
        acme = httpx.post(gw.v1 + "/chat/completions", json=body, headers={"authorization": f"Bearer {keyring.acme}"})
    assert globex.status_code == 403 and globex.json()["error"]["code"] == "insufficient_scope"
    assert acme.status_code == 403 and acme.json()["error"]["code"] == "model_not_allowed"
    assert peer.calls == 0


def test_a_serving_gateway_takes_a_changed_tenants_file_without_a_restart(tmp_path, memory_telemetry, keyring, peer):
    path = _tenants_file(tmp_path, '[[tenants]]\nname = "acme"\nmodels = ["n-*"]\n')
    body = {"model": "n-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    headers = {"authorization": f"Bearer {keyring.acme}"}
    with serve(metered_app(peer, keyring, tenants_file=path, tenants_poll_s=0.05)) as gw:
        before = httpx.post(gw.v1 + "/chat/completions", json=body, headers=headers).status_code
        path.write_text('[[tenants]]\nname = "acme"\nmodels = ["none-*"]\n')
        os.utime(path, ns=(2, 2))
        deadline = time.monotonic() + 10
        while (after := httpx.post(gw.v1 + "/chat/completions", json=body, headers=headers)).status_code == 200:
            assert time.monotonic() < deadline, "the changed tenants file was not taken"
            time.sleep(0.05)
    assert before == 200 and after.status_code == 403 and after.json()["error"]["code"] == "model_not_allowed"
    reloads = memory_telemetry.memory.metrics()[names.TENANTS_RELOADS.name]
    assert point_value(reloads, **{names.CATALOG_RELOAD_OUTCOME: "ok"}) >= 1
