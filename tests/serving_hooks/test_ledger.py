"""The usage ledger (issue 17, Deliver 4 and 6): rows from the real gateway in front of a real
upstream, the spool, idempotent shipping, a full spool, ``GET /admin/usage`` and ``observatory usage``."""

from __future__ import annotations

import json
import secrets
import subprocess
import time

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.ledger import Ledger, LedgerMiddleware, UsageRow, open_ledger
from gpt_observatory.serving_hooks.ledger._read import totals
from gpt_observatory.serving_hooks.ledger._row import iso
from gpt_observatory.serving_hooks.ledger._sqlite import SqliteStore
from gpt_observatory.serving_hooks.production import admin_app
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.components import VENV_BIN, free_port
from tests.serving_hooks.support import point_value, serve, settle
from tests.serving_hooks.upstream_peer import PROMPT_TOKENS

PEER_MODELS = ["up-model", "fail-500", "stall", "cut"]

# The app without its own ledger: these tests wrap it in one they hold (create_app wires one in
# from the settings; test_ledger_kill runs that).
UNWIRED = {"ledger_enabled": False}


def row(i: int, tenant: str = "acme", **extra) -> UsageRow:
    return UsageRow(f"req-{i}", iso(time.time()), tenant, "/v1/chat/completions", "ok", 200, 7, i % 5, **extra)


def test_rows_reach_the_store_once_and_a_retried_batch_changes_nothing(tmp_path):
    ledger = Ledger(tmp_path / "spool", str(tmp_path / "ledger.sqlite3"), batch_rows=64)
    ledger.start()
    rows = [row(i, tenant=f"t{i % 3}") for i in range(1000)]
    for r in rows:
        assert ledger.submit(r) is True
    assert ledger.flush(30)
    assert ledger.store.insert(rows[:100]) == 0  # the same batch again: nothing new
    got = {t["key"]: t for t in totals(ledger.store, "tenant")}
    for tenant in ("t0", "t1", "t2"):
        mine = [r for r in rows if r.tenant == tenant]
        assert got[tenant]["requests"] == len(mine)
        assert got[tenant]["output_tokens"] == sum(r.output_tokens for r in mine)
    assert ledger.meters.dropped_total == 0
    ledger.close()


def test_rows_a_dead_store_left_in_the_spool_ship_on_the_next_start(tmp_path):
    spool = tmp_path / "spool"
    dead = f"postgresql://nobody@127.0.0.1:{free_port()}/none"  # nothing listens there
    first = Ledger(spool, dead, ship_interval_s=0.05)
    first.start()
    for i in range(50):
        first.submit(row(i))
    assert not first.flush(1.0)  # written to the spool, not shipped
    first.close(timeout_s=1.0)
    second = Ledger(spool, str(tmp_path / "ledger.sqlite3"))
    second.start()
    assert second.flush(10)
    assert totals(second.store)[0]["requests"] == 50
    second.close()


def test_a_full_spool_drops_and_counts_without_blocking(tmp_path):
    ledger = Ledger(tmp_path / "spool", str(tmp_path / "ledger.sqlite3"), spool_max_mb=0.05,
                    ship_interval_s=60)
    ledger.start()
    fat = "x" * 2000
    start = time.perf_counter()
    results = [ledger.submit(row(i, tenant=fat)) for i in range(200)]
    assert time.perf_counter() - start < 5
    assert True in results and False in results  # the first rows fit, the rest were refused
    assert results.index(False) == results.count(True)  # refused from the bound on, none kept after
    assert ledger.meters.dropped_total == results.count(False)
    assert ledger.flush(10)
    assert totals(ledger.store)[0]["requests"] == results.count(True)  # what was taken reached the store
    ledger.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 10_000), st.integers(0, 10_000),
                          st.none() | st.integers(0, 5_000_000)), max_size=40))
def test_totals_are_exact_sums_per_tenant_and_currency(tmp_path_factory, data):
    store = SqliteStore(tmp_path_factory.mktemp("t") / "l.sqlite3")
    rows = [UsageRow(f"r{i}", iso(1.7e9 + i), t, "/v1/completions", "ok", 200, inp, out,
                     cost_micro=cost, currency="EUR" if cost is not None else None)
            for i, (t, inp, out, cost) in enumerate(data)]
    if rows:
        store.insert(rows)
    for group in totals(store, "tenant"):
        mine = [r for r in rows if r.tenant == group["key"] and r.currency == group["currency"]]
        assert group["requests"] == len(mine)
        assert (group["input_tokens"], group["output_tokens"]) == (sum(r.input_tokens for r in mine),
                                                                    sum(r.output_tokens for r in mine))
        costs = [r.cost_micro for r in mine if r.cost_micro is not None]
        assert group["cost_micro"] == (sum(costs) if costs else None)
    store.close()


# ------------------------------------------------------------------ the real gateway in front of a real upstream
def _settings(upstream_peer, keyring, **extra):
    extra.setdefault("upstream_timeout_s", 0.5)
    extra.setdefault("ledger_enabled", True)
    return load(backend="upstream", upstream_url=upstream_peer.url, api_keys_file=keyring.path,
                upstream_models=PEER_MODELS, **extra)


def _trace() -> tuple[str, dict[str, str]]:
    tid = secrets.token_hex(16)
    return tid, {"traceparent": f"00-{tid}-{secrets.token_hex(8)}-01"}


def _usage_of_stream(lines: list[str]) -> dict | None:
    usage = None
    for line in lines:
        if line.startswith("data: {"):
            usage = orjson.loads(line[6:]).get("usage") or usage
    return usage


def test_each_request_is_one_row_with_what_the_caller_was_charged(memory_telemetry, upstream_peer, keyring,
                                                                  state_dir):
    settings_ = _settings(upstream_peer, keyring)
    ledger = open_ledger(settings_)
    ledger.start()
    seen: dict[str, dict | None] = {}  # trace id -> the usage the caller saw (None: none shown)
    outcome: dict[str, str] = {}
    auth = {"authorization": f"Bearer {keyring.acme}"}
    with serve(LedgerMiddleware(create_app(settings_.model_copy(update=UNWIRED)), ledger)) as gw, httpx.Client(base_url=gw.v1, timeout=10) as http:
        for n in range(1, 4):  # plain
            tid, tp = _trace()
            r = http.post("/chat/completions", headers={**auth, **tp},
                          json={"model": "up-model", "max_tokens": n, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200
            seen[tid], outcome[tid] = r.json()["usage"], "ok"
        for model, options, expected in (("up-model", {"include_usage": True}, "ok"), ("up-model", None, "ok"),
                                         ("cut", {"include_usage": True}, "error")):
            tid, tp = _trace()
            body = {"model": model, "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            if options:
                body["stream_options"] = options
            with http.stream("POST", "/chat/completions", headers={**auth, **tp}, json=body) as r:
                seen[tid], outcome[tid] = _usage_of_stream(list(r.iter_lines())), expected
        tid, tp = _trace()  # the upstream fails
        r = http.post("/completions", headers={**auth, **tp}, json={"model": "fail-500", "prompt": "x"})
        assert r.status_code >= 500
        seen[tid], outcome[tid] = None, "error"
        tid, tp = _trace()  # the caller leaves mid-stream
        with http.stream("POST", "/chat/completions", headers={**auth, **tp},
                         json={"model": "stall", "stream": True, "max_tokens": 3,
                               "messages": [{"role": "user", "content": "hi"}]}) as r:
            next(r.iter_raw())
        seen[tid], outcome[tid] = None, "cancelled"
        r = http.post("/completions", json={"model": "up-model", "prompt": "x"})  # no credential: not a row
        assert r.status_code == 401
        deadline = time.monotonic() + 10
        while len(_rows(ledger)) < len(seen) and time.monotonic() < deadline:
            ledger.flush(5)
            time.sleep(0.05)
        settle(memory_telemetry)
    ledger.close()
    rows = {r["trace_id"]: r for r in _rows(ledger, reopen=True)}
    assert set(rows) == set(seen)
    for tid, usage in seen.items():
        got = rows[tid]
        assert (got["outcome"], got["tenant"], got["model"] is not None) == (outcome[tid], "acme", True), got
        if usage is not None:  # to the token, what the caller was shown
            assert (got["input_tokens"], got["output_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
        assert got["latency_s"] > 0 and got["subject"] and got["billable"] == 1
    assert rows[next(iter(seen))]["input_tokens"] == PROMPT_TOKENS
    # ... and in all, what the gateway metered (and settled the token budget with), streams, cuts,
    # failures and departures included.
    points = memory_telemetry.memory.metrics()[names.GATEWAY_TOKENS.name]
    for kind, column in ((names.GEN_AI_TOKEN_TYPE_INPUT, "input_tokens"), (names.GEN_AI_TOKEN_TYPE_OUTPUT, "output_tokens")):
        metered = point_value(points, **{names.TENANT: "acme", names.GEN_AI_TOKEN_TYPE: kind})
        assert sum(r[column] for r in rows.values()) == metered


def _rows(ledger: Ledger, reopen: bool = False) -> list[dict]:
    store = SqliteStore(ledger.store.path) if reopen else ledger.store
    cur = store.db.execute("SELECT * FROM usage")
    cols = [c[0] for c in cur.description]
    out = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    if reopen:
        store.close()
    return out


def test_admin_usage_and_the_cli_read_the_same_totals(tmp_path, state_dir):
    path = tmp_path / "ledger.sqlite3"
    store = SqliteStore(path)
    store.insert([UsageRow(f"r{i}", iso(1.7e9 + 86400 * (i % 2)), "acme" if i % 3 else "globex", "/v1/completions",
                           "ok", 200, 10, i, model="m", model_version="3", cost_micro=1500 * i, currency="USD")
                  for i in range(12)]
                 + [UsageRow("shadow", iso(1.7e9), "acme", "/v1/completions", "ok", 200, 99, 99, billable=False,
                             shadow=True)])
    store.close()
    settings_ = load(backend="upstream", upstream_url="http://127.0.0.1:1/v1", ledger_url=str(path),
                     allow_anonymous=True)
    from fastapi import FastAPI

    admin = admin_app(FastAPI(), {"tracing": False, "metrics": False, "logs": False,
                                               "operation_spans": False}, settings_)
    with serve(admin, lifespan="off") as served:
        answer = httpx.get(served.url + "/admin/usage", params={"by": "tenant"}).json()
        by_day = httpx.get(served.url + "/admin/usage", params={"by": "day", "tenant": "acme"}).json()
        bad = httpx.get(served.url + "/admin/usage", params={"since": "yesterday-ish"})
    acme = next(r for r in answer["rows"] if r["key"] == "acme")
    mine = [i for i in range(12) if i % 3]
    assert acme["requests"] == len(mine) and acme["output_tokens"] == sum(mine)  # the shadow row is not billed
    assert acme["cost_micro"] == 1500 * sum(mine) and acme["cost"] == f"{1500 * sum(mine) / 1e6:.6f}"
    assert [r["requests"] for r in by_day["rows"]] == [sum(1 for i in mine if i % 2 == 0), sum(1 for i in mine if i % 2)]
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"

    out = subprocess.run([str(VENV_BIN / "observatory"), "usage", "--ledger", str(path), "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rows"] == answer["rows"]
    csv_out = subprocess.run([str(VENV_BIN / "observatory"), "usage", "--ledger", str(path), "--by", "model",
                              "--format", "csv"], capture_output=True, text=True, timeout=120)
    assert csv_out.stdout.splitlines()[1].startswith("m@3,USD,12,120,66,")


def test_a_row_takes_the_price_and_cost_the_pricing_layer_marked():
    from types import SimpleNamespace

    from gpt_observatory.serving_hooks.ledger._middleware import _priced

    price = SimpleNamespace(input_micro_per_1m=600_000, output_micro_per_1m=2_400_000, currency="EUR")
    marked = SimpleNamespace(price=price, cost_micro=1234, input_tokens=10, output_tokens=5)
    assert _priced(marked) == {"price_input_micro_per_1m": 600_000, "price_output_micro_per_1m": 2_400_000,
                               "currency": "EUR", "cost_micro": 1234}
    assert _priced(SimpleNamespace(input_tokens=10, output_tokens=5)) == {
        "price_input_micro_per_1m": None, "price_output_micro_per_1m": None, "currency": None, "cost_micro": None}


def test_a_ledger_not_started_keeps_nobody_waiting_and_ships_once_started(tmp_path):
    import asyncio

    ledger = Ledger(tmp_path / "spool", str(tmp_path / "ledger.sqlite3"), spool_sync="full")

    async def submit() -> object:
        assert ledger.submit(row(1))  # in the spool at once
        return ledger.synced()

    assert asyncio.run(submit()) is None  # an app served without its lifespan: no fsync thread to wait for
    assert not ledger.flush(0.2)
    ledger.start()
    assert ledger.flush(10)
    assert totals(ledger.store)[0]["requests"] == 1
    ledger.close()


@pytest.mark.slow
def test_ten_thousand_requests_the_ledger_holds_what_each_caller_saw(memory_telemetry, upstream_peer, keyring,
                                                                     state_dir):
    """Issue 17's Must show: 10,000 requests (plain, streamed with and without usage, cut, failed, left
    mid-stream): one row each, the tokens of every request that showed usage to the token, and in all
    what the gateway metered."""
    import asyncio

    settings_ = _settings(upstream_peer, keyring, upstream_timeout_s=3)  # a loaded box: no timeouts
    ledger = open_ledger(settings_)
    ledger.start()
    seen: dict[str, dict | None] = {}
    kinds = ("plain", "stream_usage", "stream", "cut", "failed", "left", "plain", "stream_usage")

    async def drive(base: str) -> None:
        sem = asyncio.Semaphore(16)

        async def one(i: int, http: httpx.AsyncClient) -> None:
            kind = kinds[i % len(kinds)]
            body: dict = {"model": {"cut": "cut", "failed": "fail-500", "left": "stall"}.get(kind, "up-model"),
                          "max_tokens": 1 + i % 7, "messages": [{"role": "user", "content": "hi"}]}
            if kind in ("stream_usage", "stream", "cut", "left"):
                body["stream"] = True
            if kind in ("stream_usage", "cut"):
                body["stream_options"] = {"include_usage": True}
            tid, tp = _trace()
            seen[tid] = None
            async with sem, http.stream("POST", "/chat/completions", json=body, headers=tp) as r:
                if kind == "left":
                    async for _ in r.aiter_raw():
                        break
                    return
                text = (await r.aread()).decode()
            if not body.get("stream") and r.status_code == 200:
                seen[tid] = orjson.loads(text)["usage"]
            elif body.get("stream"):
                seen[tid] = _usage_of_stream(text.splitlines())

        async with httpx.AsyncClient(base_url=base, timeout=30, headers={"authorization": f"Bearer {keyring.acme}"},
                                     limits=httpx.Limits(max_connections=32)) as http:
            await asyncio.gather(*(one(i, http) for i in range(10_000)))

    with serve(LedgerMiddleware(create_app(settings_.model_copy(update=UNWIRED)), ledger)) as gw:
        asyncio.run(drive(gw.v1))
        settle(memory_telemetry, timeout=30)
        assert ledger.flush(60)
    ledger.close()
    rows = {r["trace_id"]: r for r in _rows(ledger, reopen=True)}
    assert len(rows) == len(seen) == 10_000 and set(rows) == set(seen)
    shown = {t: u for t, u in seen.items() if u}
    assert len(shown) >= 4900  # 5,000 asked usage (an answer the loaded box timed out shows none)
    assert sum(u["prompt_tokens"] for u in shown.values()) == sum(rows[t]["input_tokens"] for t in shown)
    assert sum(u["completion_tokens"] for u in shown.values()) == sum(rows[t]["output_tokens"] for t in shown)
    assert all((rows[t]["input_tokens"], rows[t]["output_tokens"]) == (u["prompt_tokens"], u["completion_tokens"])
               for t, u in shown.items())
    points = memory_telemetry.memory.metrics()[names.GATEWAY_TOKENS.name]
    for kind, column in ((names.GEN_AI_TOKEN_TYPE_INPUT, "input_tokens"), (names.GEN_AI_TOKEN_TYPE_OUTPUT, "output_tokens")):
        metered = point_value(points, **{names.TENANT: "acme", names.GEN_AI_TOKEN_TYPE: kind})
        assert sum(r[column] for r in rows.values()) == metered
    outcomes = {o: sum(1 for r in rows.values() if r["outcome"] == o) for o in names.LEDGER_OUTCOMES}
    assert outcomes["rejected"] == 0 and outcomes["ok"] >= 6000 and outcomes["error"] >= 2500, outcomes


def test_the_ledger_is_on_by_default(upstream_peer, keyring, monkeypatch):
    monkeypatch.delenv("OBSERVATORY_SERVE_LEDGER_ENABLED")  # the suite's conftest turns it off for other tests
    settings = load(backend="upstream", upstream_url=upstream_peer.url, api_keys_file=keyring.path,
                    upstream_models=PEER_MODELS)
    assert settings.ledger_enabled
    app = create_app(settings)
    assert isinstance(app, LedgerMiddleware)
    with serve(app) as gw:
        r = httpx.post(gw.v1 + "/completions", json={"model": "up-model", "prompt": "x", "max_tokens": 2},
                       headers={"authorization": f"Bearer {keyring.acme}"}, timeout=10)
        assert r.status_code == 200
        assert app.ledger.flush(30)
        assert totals(app.ledger.store)[0]["output_tokens"] == r.json()["usage"]["completion_tokens"]


def test_request_ids_are_unique_in_a_process_and_across_a_fork():
    import os

    from gpt_observatory.serving_hooks.ledger._row import new_request_id

    mine = [new_request_id() for _ in range(10_000)]
    assert len(set(mine)) == len(mine) and len({len(i) for i in mine}) == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first ids, to the parent
        os.write(write, "\n".join(new_request_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read().split("\n")
    os.waitpid(pid, 0)
    assert len(child) == 100 and not set(child) & set(mine + [new_request_id() for _ in range(100)])
