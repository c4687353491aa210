"""Budgets enforced (serving_hooks.budgets): the worst case reserved against the tenant's budget in one
atomic step, settled to the real cost after the call; a 429 ``insufficient_quota`` with the reset time
past it; the store's failures fail open (counted) or closed by setting; reserve/settle invariants of both
stores (Redis' Lua scripts, the ``limits`` storage the host store serves) under hypothesis."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from limits.aio.storage import MemoryStorage

from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.budgets import LimitsBudgetStore, RedisBudgetStore, metering_for
from gpt_observatory.serving_hooks.gateway import GatewayMiddleware
from gpt_observatory.serving_hooks.ratelimit import limiter_for
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.serving_hooks.support import point_value, serve, settle
from tests.serving_hooks.test_limits import CountingPeer


@pytest.fixture
def peer():
    """A real OpenAI-compatible upstream whose usage is all a request declared (5 prompt tokens + n x max_tokens)."""
    with CountingPeer() as running:
        yield running


PROMPT = "0123456789abcdefghij"  # 20 bytes: 5 tokens to the upstream estimate, and the counting peer's usage
PRICES = '''
[[prices]]
model = "n-model"
effective_from = 2026-01-01T00:00:00Z
currency = "USD"
input_per_1m = "1000"    # 1000 micro-units (0.001 USD) a token, in and out
output_per_1m = "1000"
'''


def metered_app(peer: CountingPeer, keyring: Any, host_store: Any = None, **extra: Any) -> Any:
    """The reference app on the counting peer with the metering ``extra`` settings describe: ``create_app``
    builds it from the settings (``serve --workers`` passes its supervisor's ``host_store`` instead)."""
    extra.setdefault("ledger_enabled", False)  # the gateway itself, not wrapped in the ledger's middleware
    settings = load(backend="upstream", upstream_url=peer.url, model="n-model", api_keys_file=keyring.path,
                    redis_timeout_s=1.0, **extra)
    app = create_app(settings, limiter=limiter_for(settings, host_store),
                     **({"metering": metering_for(settings, host_store)} if host_store is not None else {}))
    assert isinstance(app, GatewayMiddleware) and app.metering is not None
    return app


def _files(tmp_path, budget: str = "1", period: str = "day") -> dict[str, Any]:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f'[[tenants]]\nname = "acme"\nbudget = {{ amount = "{budget}", period = "{period}" }}\n')
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    return {"tenants_file": tenants, "prices_file": prices, "rate_limit_namespace": f"b-{uuid.uuid4().hex}"}


def _chat(max_tokens: int = 100, prompt: str = PROMPT) -> dict[str, Any]:
    return {"model": "n-model", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}


def _clear(redis_url: str, namespace: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{namespace}*"):
        client.delete(key)


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_tenant_is_served_until_its_budget_and_then_gets_insufficient_quota(
        store, request, tmp_path, memory_telemetry, keyring, peer):
    redis_url = request.getfixturevalue("redis_url") if store == "redis" else None
    files = _files(tmp_path, budget="1")  # 1 USD; each request costs (5 + 100) x 0.001 = 0.105 USD
    headers = {"authorization": f"Bearer {keyring.acme}"}
    with serve(metered_app(peer, keyring, redis_url=redis_url, **files)) as gw:
        answers = [httpx.post(gw.v1 + "/chat/completions", json=_chat(), headers=headers) for _ in range(11)]
        settle(memory_telemetry)
        scrape = memory_telemetry.memory.metrics()
    assert [a.status_code for a in answers] == [200] * 9 + [429] * 2 and peer.calls == 9
    error = answers[-1].json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    assert answers[-1].headers["x-observatory-budget-reset"] == midnight.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert 0 < int(answers[-1].headers["retry-after"]) <= 86400
    assert "0.945 USD of 1 USD spent" in error["message"] and "may cost up to 0.105 USD" in error["message"]
    assert point_value(scrape[names.GATEWAY_REJECTIONS.name], **{names.REJECTION_REASON: "budget"}) == 2
    spent = [p.value for p in scrape[names.BUDGET_SPENT.name] if p.attributes[names.TENANT] == "acme"]
    limit = [p.value for p in scrape[names.BUDGET_LIMIT.name] if p.attributes[names.TENANT] == "acme"]
    assert spent == [945_000] and limit == [1_000_000]
    if redis_url:
        _clear(redis_url, files["rate_limit_namespace"])


def test_a_reservation_is_settled_to_the_real_cost(tmp_path, memory_telemetry, keyring, peer, redis_url):
    """A 40-byte prompt is reserved as 10 tokens; the peer reports 5: each request settles 5 tokens lower,
    so 9 requests of 0.110 USD worst case leave 0.945 USD charged, and the tenth still fits."""
    files = _files(tmp_path, budget="1.06")
    headers = {"authorization": f"Bearer {keyring.acme}"}
    with serve(metered_app(peer, keyring, redis_url=redis_url, **files)) as gw:
        statuses = [httpx.post(gw.v1 + "/chat/completions", json=_chat(prompt=PROMPT * 2), headers=headers).status_code
                    for _ in range(11)]
    assert statuses == [200] * 10 + [429]  # worst case 0.110 each: 10 would not fit without the settlements
    keys = list(redis.Redis.from_url(redis_url).scan_iter(f"{files['rate_limit_namespace']}:budget:acme:*"))
    assert len(keys) == 1 and int(redis.Redis.from_url(redis_url).get(keys[0])) == 10 * 105_000
    _clear(redis_url, files["rate_limit_namespace"])


def test_a_request_larger_than_the_whole_budget_is_refused_at_once(tmp_path, memory_telemetry, keyring, peer):
    files = _files(tmp_path, budget="0.05")
    with serve(metered_app(peer, keyring, **files)) as gw:
        answer = httpx.post(gw.v1 + "/chat/completions", json=_chat(), headers={"authorization": f"Bearer {keyring.acme}"})
    assert answer.status_code == 429 and answer.json()["error"]["code"] == "insufficient_quota"
    assert "the whole budget is 0.05 USD; lower max_tokens or n" in answer.json()["error"]["message"]
    assert peer.calls == 0


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_dead_store_fails_open_or_closed_by_setting_and_is_counted(
        mode, tmp_path, memory_telemetry, keyring, peer):
    files = _files(tmp_path)
    app = metered_app(peer, keyring, redis_url="redis://127.0.0.1:1/0", budget_fail_mode=mode, **files)
    with serve(app) as gw:
        answers = [httpx.post(gw.v1 + "/chat/completions", json=_chat(), headers={"authorization": f"Bearer {keyring.acme}"})
                   for _ in range(3)]
        settle(memory_telemetry)
    failures = memory_telemetry.memory.metrics()[names.BUDGET_STORE_FAILURES.name]
    assert point_value(failures, **{names.BUDGET_FAIL_MODE: mode}) == 3
    if mode == "open":
        assert [a.status_code for a in answers] == [200] * 3
    else:
        assert [a.status_code for a in answers] == [503] * 3 and peer.calls == 0
        assert answers[0].json()["error"]["code"] == "budget_store_unavailable" and answers[0].headers["retry-after"] == "1"


# ------------------------------------------------------------------ the stores' invariants
ops = st.lists(st.tuples(st.integers(0, 400), st.integers(0, 600)), min_size=1, max_size=30)


async def _run_ops(store: Any, key: str, limit: int, steps: list[tuple[int, int]]) -> None:
    """Reserve each worst case, settle each admitted one to its real cost: the store agrees with a model."""
    model = 0
    for worst, real in steps:
        ok, spent = await store.reserve(key, worst, limit, 60)
        assert ok == (model + worst <= limit)
        if ok:
            model += worst
        assert spent == model
        if ok:
            model = max(0, model + real - worst)
            assert await store.adjust(key, real - worst, 60) == model
    assert await store.spent(key) == model


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=ops, limit=st.integers(1, 2000))
def test_reserve_and_settle_agree_with_a_model_on_both_stores(steps, limit, redis_url):
    async def both() -> None:
        key = f"inv-{uuid.uuid4().hex}"
        await _run_ops(LimitsBudgetStore(MemoryStorage()), key, limit, steps)
        store = RedisBudgetStore(redis_url, timeout_s=2)
        try:
            await _run_ops(store, key, limit, steps)
            ttl = redis.Redis.from_url(redis_url).ttl(key)
            assert 0 < ttl <= 60 or (ttl == -2 and not any(w <= limit for w, _ in steps))  # the period's key expires
        finally:
            redis.Redis.from_url(redis_url).delete(key)
            await store.close()

    asyncio.run(both())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(amounts=st.lists(st.integers(1, 300), min_size=2, max_size=60), limit=st.integers(1, 3000))
def test_concurrent_reservations_never_overdraw(amounts, limit, redis_url):
    async def race() -> None:
        key = f"race-{uuid.uuid4().hex}"
        for store in (LimitsBudgetStore(MemoryStorage()), RedisBudgetStore(redis_url, timeout_s=2)):
            results = await asyncio.gather(*(store.reserve(key, a, limit, 60) for a in amounts))
            admitted = sum(a for a, (ok, _) in zip(amounts, results, strict=True) if ok)
            assert admitted <= limit and await store.spent(key) == admitted
            refused = [a for a, (ok, _) in zip(amounts, results, strict=True) if not ok]
            if isinstance(store, RedisBudgetStore):  # one atomic check: a refusal means it did not fit then
                assert all(admitted + a > limit for a in refused)
                redis.Redis.from_url(redis_url).delete(key)
            await store.close()

    asyncio.run(race())


def test_an_alias_is_held_to_and_priced_as_its_catalog_entry(tmp_path, memory_telemetry, keyring, peer):
    """A tenant allowed 'n-model' may call it by its alias, and the alias spends the entry's price."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(f'[[models]]\nname = "n-model"\nkind = "upstream"\nurl = "{peer.url}"\naliases = ["n-alias"]\n'
                       f'[[models]]\nname = "n-other"\nkind = "upstream"\nurl = "{peer.url}"\n')
    files = _files(tmp_path, budget="0.2")
    files["tenants_file"].write_text('[[tenants]]\nname = "acme"\nmodels = ["n-model"]\n'
                                     'budget = { amount = "0.2", period = "month" }\n')
    headers = {"authorization": f"Bearer {keyring.acme}"}
    with serve(metered_app(peer, keyring, catalog_file=catalog, **files)) as gw:
        chat = gw.v1 + "/chat/completions"
        by_alias = [httpx.post(chat, json={**_chat(), "model": "n-alias"}, headers=headers).status_code for _ in range(2)]
        other = httpx.post(chat, json={**_chat(), "model": "n-other"}, headers=headers)
    assert by_alias == [200, 429]  # 0.105 USD each at n-model's price: the second does not fit in 0.2
    assert other.status_code == 403 and other.json()["error"]["code"] == "model_not_allowed"


def test_prices_without_a_tenants_file_limit_nobody(tmp_path, memory_telemetry, keyring, peer):
    files = _files(tmp_path)
    del files["tenants_file"]
    app = metered_app(peer, keyring, **files)
    assert app.metering is not None and app.metering.prices.price_at("n-model") is not None
    with serve(app) as gw:
        statuses = [httpx.post(gw.v1 + "/chat/completions", json=_chat(), headers={
            "authorization": f"Bearer {key}"}).status_code for key in (keyring.acme, keyring.globex) * 3]
    assert statuses == [200] * 6 and peer.calls == 6


requests = st.lists(st.tuples(st.integers(1, 50), st.integers(1, 200), st.integers(0, 100), st.integers(0, 3)),
                    min_size=1, max_size=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=requests, budget_micro=st.integers(1, 300_000), on_redis=st.booleans())
def test_concurrent_calls_spend_at_most_the_budget_and_the_store_ends_at_their_real_cost(
        calls, budget_micro, on_redis, redis_url):
    """Each call reserves (prompt, max output) at 1000 micro-units a token, waits a few loop turns, and
    settles to a real use no larger: the admitted worst cases never exceed the budget together, and the
    store ends at the sum of the real costs."""
    from gpt_observatory.serving_hooks.budgets import Metering
    from gpt_observatory.serving_hooks.prices import Price, PriceTable
    from gpt_observatory.serving_hooks.tenants import Budget, Tenant, TenantTable

    tenant = Tenant("acme", budget=Budget(budget_micro, "month"))
    table = PriceTable((Price("m", datetime(2026, 1, 1, tzinfo=UTC), "USD", 10**9, 10**9),))
    namespace = f"prop-{uuid.uuid4().hex}"

    async def scenario() -> None:
        store = RedisBudgetStore(redis_url, timeout_s=2) if on_redis else LimitsBudgetStore(MemoryStorage())
        metering = Metering(TenantTable({"acme": tenant}, None), table, store, namespace=namespace)
        held, real_costs = [0], []

        async def call(prompt: int, output: int, used: int, turns: int) -> None:
            try:
                hold = await metering.reserve(tenant, "m", prompt, output)
            except Exception:  # the 429 (ApiError): refused, nothing held
                return
            held[0] += hold.reserved
            assert held[0] <= budget_micro  # what is reserved or spent never passes the budget
            for _ in range(turns):
                await asyncio.sleep(0)
            cost = await metering.settle(hold, prompt, min(used, output))
            held[0] += cost - hold.reserved
            real_costs.append(cost)

        try:
            await asyncio.gather(*(call(*c) for c in calls))
            key = f"{namespace}:budget:acme:{int(tenant.budget.window(datetime.now(UTC))[0].timestamp())}"
            assert await store.spent(key) == sum(real_costs) == held[0]
        finally:
            await metering.close()
            if on_redis:
                _clear(redis_url, namespace)

    asyncio.run(scenario())
