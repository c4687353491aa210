"""Cached prompt tokens and the replica in the usage ledger: an upstream's
``usage.prompt_tokens_details.cached_tokens`` is checked (a count within the prompt tokens) and priced,
a hostile one (negative, a string, past the prompt, a float, a bool) is ignored and counted, and the
row names the pool replica that answered by a label that carries no credential (real app on real
uvicorn, a real pool of the local upstream peer, a real ledger)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpt_observatory.serving_hooks import prices
from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.backends._answers import Malformed, cached_of
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.serving_hooks.support import point_value, serve, settle
from tests.serving_hooks.upstream_peer import PROMPT_TOKENS

GOOD = {"cached-3": 3, "cached-0": 0, f"cached-{PROMPT_TOKENS}": PROMPT_TOKENS}
HOSTILE = ["cached--1", f"cached-{PROMPT_TOKENS + 1}", "cached-three", "cached-2.5", "cached-true"]
PRICES = '''
[[prices]]
model = "cached-3"
effective_from = 2026-01-01T00:00:00Z
currency = "USD"
input_per_1m = "4"
cached_input_per_1m = "1"
output_per_1m = "8"
'''


def rows_of(path) -> dict[str, list[dict]]:
    db = sqlite3.connect(path)
    try:
        cur = db.execute("SELECT * FROM usage")
        cols = [c[0] for c in cur.description]
        out: dict[str, list[dict]] = {}
        for r in cur.fetchall():
            row = dict(zip(cols, r, strict=True))
            out.setdefault(row["model"], []).append(row)
        return out
    finally:
        db.close()


def test_rows_hold_the_upstreams_cached_tokens_and_the_replica_and_ignore_hostile_ones(
        tmp_path, memory_telemetry, upstream_peer, keyring):
    port = upstream_peer.url.split(":")[2].split("/")[0]
    secret = "s3cret-in-the-url"
    catalog = tmp_path / "catalog.toml"
    catalog.write_text("".join(
        f'[[models]]\nname = "{model}"\nkind = "upstream"\n'
        f'replicas = [{{ url = "http://user:{secret}@127.0.0.1:{port}/v1" }}, '  # no name: host:port, no userinfo
        f'{{ url = "{upstream_peer.url}", name = "peer-b" }}]\n'
        for model in [*GOOD, *HOSTILE, "up-model"]))
    price_file = tmp_path / "prices.toml"
    price_file.write_text(PRICES)
    settings = load(backend="upstream", upstream_url=upstream_peer.url, catalog_file=catalog, api_keys_file=keyring.path,
                    prices_file=price_file,
                    ledger_enabled=True, ledger_url=str(tmp_path / "ledger.sqlite3"), ledger_spool_dir=tmp_path / "spool")
    sent: dict[str, int] = {}
    auth = {"authorization": f"Bearer {keyring.acme}"}
    with serve(create_app(settings)) as gw, httpx.Client(base_url=gw.v1, timeout=10, headers=auth) as client:
        for model in [*GOOD, *HOSTILE, "up-model"]:
            for stream in (False, True):
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                        "stream": stream}
                r = client.post("/chat/completions", json=body)
                assert r.status_code == 200 and "error" not in r.text, (model, r.text)  # the answer itself is fine
                sent[model] = sent.get(model, 0) + 1
        settle(memory_telemetry)
        ignored = point_value(memory_telemetry.memory.metrics()[names.UPSTREAM_IGNORED_FIELDS.name],
                              **{names.UPSTREAM_FIELD: "cached_tokens"})
    rows = rows_of(tmp_path / "ledger.sqlite3")
    assert {m: len(r) for m, r in rows.items()} == sent
    for model, cached in GOOD.items():
        assert [r["cached_tokens"] for r in rows[model]] == [cached, cached], model
    for model in [*HOSTILE, "up-model"]:
        assert [r["cached_tokens"] for r in rows[model]] == [None, None], model
    assert ignored == 2 * len(HOSTILE)
    every = [r for group in rows.values() for r in group]
    assert {r["replica"] for r in every} <= {f"127.0.0.1:{port}", "peer-b"} and all(r["replica"] for r in every)
    assert all(secret not in str(r) for r in every)
    # the cached tokens are priced as such: what the gateway settled is the row's cost
    price = prices.load(price_file, "USD").price_at("cached-3", datetime.now(UTC))
    for r in rows["cached-3"]:
        assert r["cost_micro"] == prices.cost_micro(price, PROMPT_TOKENS, 3, 3, None)
        assert r["cost_micro"] < prices.cost_micro(price, PROMPT_TOKENS, 3, 0, None)


@given(st.one_of(st.none(), st.booleans(), st.integers(-10, 100), st.floats(allow_nan=True), st.text(max_size=4),
                 st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(0, 3))),
       st.one_of(st.none(), st.integers(0, 50)), st.booleans())
def test_cached_tokens_are_a_count_within_the_prompt_or_refused(value, prompt, as_details):
    details = {"cached_tokens": value} if as_details else value
    usage = {"prompt_tokens_details": details}
    if details is None or (isinstance(details, dict) and details.get("cached_tokens") is None):
        assert cached_of(usage, prompt) is None  # nothing reported
    elif isinstance(details, dict) and type(value) is int and prompt is not None and 0 <= value <= prompt:
        assert cached_of(usage, prompt) == value
    else:
        with pytest.raises(Malformed):
            cached_of(usage, prompt)
