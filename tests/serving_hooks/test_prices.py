"""Prices per catalog model (serving_hooks.prices): exact micro-unit arithmetic, the price in force at a
time, a prices file that names what is wrong, and one warning (never a refusal) for the prices the catalog
serving never bills, at start and at each reload of either file."""

from __future__ import annotations

import math
import tomllib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from gpt_observatory.serving_hooks import catalog, prices
from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.prices import Price, PriceTable, cost_micro, to_micro
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry.settings import ConfigError
from tests import components
from tests.serving_hooks.support import serve
from tests.serving_hooks.test_catalog_reload import entry, write

T0 = datetime(2026, 12, 1, tzinfo=UTC)
micro = st.integers(0, 10**12)
tokens = st.integers(0, 10**9)


def _price(pin: int, pout: int, cached: int | None = None, gpu: int = 0, at: datetime = T0) -> Price:
    return Price("m", at, "USD", pin, pout, cached, gpu)


@given(pin=micro, pout=micro, cached_price=st.none() | micro, inp=tokens, out=tokens, cached=tokens)
def test_a_cost_is_the_exact_sum_rounded_up_once(pin, pout, cached_price, inp, out, cached):
    price = _price(pin, pout, cached_price)
    hit = min(cached, inp)
    exact = (Fraction(inp - hit) * pin + Fraction(hit) * (pin if cached_price is None else cached_price)
             + Fraction(out) * pout) / 1_000_000
    assert cost_micro(price, inp, out, cached) == math.ceil(exact)
    assert isinstance(cost_micro(price, inp, out, cached), int)


@given(pin=micro, pout=micro, a=st.tuples(tokens, tokens), b=st.tuples(tokens, tokens))
def test_billing_requests_apart_never_costs_less_than_together_nor_a_micro_unit_more_each(pin, pout, a, b):
    price = _price(pin, pout)
    apart = cost_micro(price, *a) + cost_micro(price, *b)
    together = cost_micro(price, a[0] + b[0], a[1] + b[1])
    assert together <= apart <= together + 1


@given(seconds=st.decimals(0, 10**6, places=6), per_second=micro)
def test_gpu_seconds_are_charged_exactly(seconds, per_second):
    price = _price(0, 0, gpu=per_second)
    assert cost_micro(price, gpu_seconds=seconds) == math.ceil(Fraction(seconds) * per_second)
    assert cost_micro(price, gpu_seconds=None) == 0  # unknown GPU time (no GPU): no charge, not a guess


def test_no_price_is_free_and_amounts_are_exact_micro_units():
    assert cost_micro(None, 10**9, 10**9) == 0
    assert to_micro("0.60") == 600_000 and to_micro(2) == 2_000_000 and to_micro(0.1) == 100_000
    assert to_micro(Decimal("1234.567891")) == 1_234_567_891
    for bad in ("0.0000001", "-1", "abc", True, "inf"):
        with pytest.raises(ValueError):
            to_micro(bad)


def test_the_price_in_force_is_the_latest_not_in_the_future():
    old, new = _price(100, 200), _price(300, 400, at=T0 + timedelta(days=10))
    table = PriceTable((new, old))
    assert table.price_at("m", T0 - timedelta(seconds=1)) is None  # before any price: none in force
    assert table.price_at("m", T0) is old
    assert table.price_at("m", T0 + timedelta(days=10) - timedelta(microseconds=1)) is old
    assert table.price_at("m", T0 + timedelta(days=10)) is new
    assert table.price_at("other", T0) is None
    with pytest.raises(ConfigError, match="two prices from"):
        PriceTable((old, old))


def test_a_prices_file_is_read_into_micro_units(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text('''
[[prices]]
model = "llama-70b"
effective_from = 2026-12-01T00:00:00Z
currency = "USD"
input_per_1m = "0.60"
output_per_1m = 2.4
cached_input_per_1m = "0.15"

[[prices]]
model = "tiny-gpt"
effective_from = 2026-12-01T01:00:00+01:00
currency = "USD"
gpu_second = "0.0011"
''')
    table = prices.load(path, "USD")
    llama = table.price_at("llama-70b", T0)
    assert (llama.input_micro_per_1m, llama.output_micro_per_1m, llama.cached_input_micro_per_1m) == (
        600_000, 2_400_000, 150_000)
    assert table.price_at("tiny-gpt", T0).gpu_second_micro == 1100  # +01:00 is T0 in UTC
    # 1M input (half cached) and 1M output: 0.30 + 0.075 + 2.40 = 2.775 USD
    assert cost_micro(llama, 1_000_000, 1_000_000, 500_000) == 2_775_000


@pytest.mark.parametrize(("table", "message"), [
    ({"model": "m", "effective_from": T0, "currency": "EUR", "input_per_1m": 1}, "currency must be given and be 'USD'"),
    ({"model": "m", "effective_from": T0, "input_per_1m": 1}, "currency must be given"),
    ({"model": "m", "effective_from": datetime(2026, 1, 1), "currency": "USD", "input_per_1m": 1}, "offset date-time"),
    ({"model": "m", "effective_from": T0, "currency": "USD", "input_per_1m": "0.0000001"}, "finer than a micro-unit"),
    ({"model": "m", "effective_from": T0, "currency": "USD"}, "input_per_1m / output_per_1m and/or gpu_second"),
    ({"model": "m", "effective_from": T0, "currency": "USD", "input_per_1m": 1, "colour": 1}, "unknown key"),
])
def test_a_bad_price_names_its_entry_and_the_fault(table, message):
    with pytest.raises(ConfigError, match=message) as raised:
        prices.parse({"prices": [table]}, "USD", source="p.toml")
    assert "p.toml: [[prices]] #1 ('m')" in str(raised.value)


def _prices_of(*models: str) -> str:
    return "".join(f'[[prices]]\nmodel = "{m}"\neffective_from = 2026-01-01T00:00:00Z\ncurrency = "USD"\n'
                   'input_per_1m = "1"\n' for m in models)


@pytest.fixture
def logged():
    """The messages logged (INFO and above) while the test runs."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    yield lines
    logger.remove(sink)


def _unserved(lines: list[str]) -> list[str]:
    return [line for line in lines if "price nothing" in line]


def test_prices_of_models_the_catalog_does_not_bill_are_named_with_the_catalog_names():
    served = catalog.parse({"models": [
        {"name": "llama-70b", "kind": "upstream", "url": "http://127.0.0.1:1", "aliases": ["llama"]},
        {"name": "tiny-gpt", "kind": "upstream", "url": "http://127.0.0.1:1"},
    ]}, load(), source="fleet.toml")
    assert prices.unserved(prices.parse({"prices": []}, "USD"), served) is None
    assert prices.unserved(prices.parse(tomllib.loads(_prices_of("llama-70b", "tiny-gpt")), "USD"), served) is None
    table = prices.parse(tomllib.loads(_prices_of("tiny-gpt", "mistral", "llama")), "USD", source="p.toml")
    message = prices.unserved(table, served)
    assert message is not None and message.startswith("p.toml: ")
    assert "model(s) 'mistral' not in the catalog" in message
    assert "alias(es) 'llama' (of 'llama-70b')" in message  # requests for it are priced as llama-70b
    assert "the catalog (fleet.toml) names 'llama-70b', 'tiny-gpt'" in message
    assert "'tiny-gpt' not" not in message


def test_serve_without_model_warns_that_a_llama_price_prices_nothing_and_each_prices_reload_checks_again(
        logged, upstream_peer, tmp_path):
    """`serve --backend upstream` without --model serves the catalog entry tiny-gpt: a price for llama-70b never
    applies. The gateway starts and serves, with one warning; a reload that prices tiny-gpt has none."""
    path = tmp_path / "prices.toml"
    write(path, _prices_of("llama-70b"))
    settings = load(backend="upstream", upstream_url=upstream_peer.url, prices_file=path, tenants_poll_s=0.05,
                    allow_anonymous=True)
    with serve(create_app(settings)) as gw:
        models = httpx.get(gw.v1 + "/models", timeout=10)
        assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["tiny-gpt"]
        [warning] = _unserved(logged)
        assert f"{path}: the [[prices]] of model(s) 'llama-70b' not in the catalog price nothing" in warning
        assert "--model / OBSERVATORY_SERVE_MODEL" in warning and "names 'tiny-gpt'" in warning

        def reloaded(count: int) -> bool:
            return sum(f"metering file {path} reloaded" in line for line in logged) >= count

        write(path, _prices_of("tiny-gpt"))
        components.wait_for(lambda: reloaded(1), timeout=10, what="the prices file reloaded")
        assert len(_unserved(logged)) == 1  # every price matches now: no new warning
        write(path, _prices_of("tiny-gpt", "llama-70b", "gpt-4o"))
        components.wait_for(lambda: reloaded(2), timeout=10, what="the prices file reloaded again")
        assert "model(s) 'gpt-4o', 'llama-70b' not in the catalog" in _unserved(logged)[-1]
        assert len(_unserved(logged)) == 2


def test_a_catalog_reload_that_drops_a_priced_model_warns(logged, upstream_peer, tmp_path):
    prices_path, catalog_path = tmp_path / "prices.toml", tmp_path / "catalog.toml"
    write(prices_path, _prices_of("llama-70b"))
    write(catalog_path, entry("llama-70b", upstream_peer.url))
    settings = load(catalog_file=catalog_path, catalog_poll_s=0.05, prices_file=prices_path, allow_anonymous=True)
    with serve(create_app(settings)):
        assert _unserved(logged) == []  # the one price names the catalog's one model
        write(catalog_path, entry("mistral", upstream_peer.url))
        components.wait_for(lambda: _unserved(logged), timeout=10, what="the warning after the catalog reload")
        [warning] = _unserved(logged)
        assert "model(s) 'llama-70b' not in the catalog" in warning
        assert f"the catalog ({catalog_path}) names 'mistral'" in warning
