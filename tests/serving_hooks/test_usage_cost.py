"""The cost counter (``observatory.usage.cost``, serving_hooks.budgets): every settled request of a priced
model counts its cost, with a budget or without one, exactly what the caller's usage at the price in force
comes to; tenants on the default tier are labelled up to BUDGET_TENANTS_TRACKED, later ones summed as one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_observatory.serving_hooks.apikeys import ApiKeyStore
from gpt_observatory.serving_hooks.budgets import Hold, Metering
from gpt_observatory.serving_hooks.prices import parse as parse_prices
from gpt_observatory.serving_hooks.tenants import Tenant, TenantTable
from gpt_observatory.telemetry import names
from tests.serving_hooks.support import point_value, serve, settle
from tests.serving_hooks.test_budgets import PRICES, metered_app
from tests.serving_hooks.test_limits import CountingPeer


def _cost(scrape: dict, **attrs: str) -> float:
    return point_value(scrape.get(names.USAGE_COST.name, []), **attrs)


def test_each_priced_request_counts_what_its_usage_costs_with_a_budget_or_without(tmp_path, memory_telemetry):
    keys = ApiKeyStore(tmp_path / "keys.json")
    budgeted, _ = keys.create("budgeted", ["inference"])
    free, _ = keys.create("free", ["inference"])
    tenants = tmp_path / "tenants.toml"
    tenants.write_text('[[tenants]]\nname = "budgeted"\nbudget = { amount = "0.1", period = "day" }\n'
                       '[[tenants]]\nname = "free"\n')
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)  # 1000 micro-units a token, in and out

    charged: dict[str, int] = {"budgeted": 0, "free": 0}
    with CountingPeer() as peer, serve(metered_app(peer, SimpleNamespace(path=keys.path), tenants_file=tenants,
                                                   prices_file=prices)) as gw:
        for tenant, key, max_tokens in [("budgeted", budgeted, 40), ("free", free, 7), ("budgeted", budgeted, 3),
                                        ("free", free, 120), ("budgeted", budgeted, 50)]:
            answer = httpx.post(gw.v1 + "/chat/completions", headers={"authorization": f"Bearer {key}"},
                                json={"model": "n-model", "messages": [{"role": "user", "content": "x" * 20}],
                                      "max_tokens": max_tokens})
            if answer.status_code == 200:
                usage = answer.json()["usage"]
                charged[tenant] += 1000 * (usage["prompt_tokens"] + usage["completion_tokens"])
            else:  # the last one's worst case (55 tokens) does not fit what is left of 0.1 USD
                assert (tenant, answer.status_code, max_tokens) == ("budgeted", 429, 50)
        settle(memory_telemetry)
        scrape = memory_telemetry.memory.metrics()
    assert charged == {"budgeted": 53_000, "free": 137_000}
    for tenant, micro in charged.items():
        assert _cost(scrape, **{names.TENANT: tenant, names.CATALOG_MODEL: "n-model",
                                names.USAGE_CURRENCY: "USD"}) == micro
    spent = [p.value for p in scrape[names.BUDGET_SPENT.name] if p.attributes[names.TENANT] == "budgeted"]
    assert spent == [charged["budgeted"]]  # the counter and the budget's store agree


def _metering(known: tuple[str, ...] = ()) -> Metering:
    table = TenantTable({n: Tenant(n) for n in known}, Tenant("default"))
    return Metering(table, parse_prices({"prices": [{
        "model": "m", "effective_from": datetime(2026, 1, 1, tzinfo=UTC), "currency": "EUR",
        "input_per_1m": "3", "output_per_1m": "5"}]}, "EUR"), currency="EUR")


@settings(max_examples=25, deadline=None)
@given(tenants=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=12),
       tokens=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)), min_size=12, max_size=12))
def test_default_tier_tenants_past_the_tracked_limit_are_summed_as_one_and_nothing_is_lost(tenants, tokens):
    """Hostile tenant names (any text, the IdP's): the table's tenant always keeps its label; the first
    BUDGET_TENANTS_TRACKED default-tier tenants theirs; the rest add to USAGE_TENANT_OTHER; the sum is exact."""
    from gpt_observatory import telemetry

    mp = pytest.MonkeyPatch()
    mp.setattr(names, "BUDGET_TENANTS_TRACKED", 3)
    handle = telemetry.configure("usage-cost-tests", traces_exporter=["memory"], metrics_exporter=["memory"],
                                 logs_exporter=["memory"], gpu_enabled=False)
    try:
        metering = _metering(known=("acme",))
        names_in_order = ["acme", *tenants]
        expected: dict[str, int] = {}
        labelled: list[str] = []
        for i, name in enumerate(names_in_order):
            tenant = metering.tenant(name)
            assert tenant is not None
            hold = asyncio.run(metering.reserve(tenant, "m", 0, 0))
            assert isinstance(hold, Hold) and hold.price is not None
            input_tokens, output_tokens = tokens[i % len(tokens)]
            cost = asyncio.run(metering.settle(hold, input_tokens, output_tokens))
            assert cost == 3 * input_tokens + 5 * output_tokens  # 3 and 5 micro-units a token
            if tenant.known or name in labelled or len(labelled) < 3:
                if not tenant.known and name not in labelled:
                    labelled.append(name)
                label = name
            else:
                label = names.USAGE_TENANT_OTHER
            expected[label] = expected.get(label, 0) + cost
        scrape = handle.memory.metrics()
        got: dict[str, float] = {}
        for p in scrape.get(names.USAGE_COST.name, []):
            assert p.attributes[names.CATALOG_MODEL] == "m" and p.attributes[names.USAGE_CURRENCY] == "EUR"
            got[p.attributes[names.TENANT]] = got.get(p.attributes[names.TENANT], 0) + p.value
        assert got == expected
        assert sum(got.values()) == sum(expected.values())
        asyncio.run(metering.close())
    finally:
        telemetry.shutdown()
        mp.undo()
