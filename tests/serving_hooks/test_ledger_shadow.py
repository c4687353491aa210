"""Shadow mirrors in the usage ledger: one billable row per caller request, one row that is not billable per
mirror (the challenger's version and tokens, the caller's tenant and trace, the price recorded, nothing
charged), totals that never charge the mirrors and show them apart when asked; tables and spooled rows
made before the ``billable`` column existed read as billable (real app on real uvicorn, a real
ledger; the last test on real MLflow)."""

from __future__ import annotations

import secrets
import sqlite3
import uuid

import httpx
import orjson

from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.backends.shadow import ShadowPolicy
from gpt_observatory.serving_hooks.ledger import COLUMNS, UsageRow
from gpt_observatory.serving_hooks.ledger._read import totals
from gpt_observatory.serving_hooks.ledger._row import iso
from gpt_observatory.serving_hooks.ledger._sqlite import SqliteStore
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests import components
from tests.serving_hooks.support import serve, settle
from tests.serving_hooks.test_shadow import MODEL, EchoModel, metric, shadow_router, wait_mirrored

PRICES = '''
[[prices]]
model = "{model}"
effective_from = 2026-01-01T00:00:00Z
currency = "USD"
input_per_1m = "1"
output_per_1m = "2"
'''


def ledger_settings(tmp_path, model: str, **extra):
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES.format(model=model))
    return load(model=model, ledger_enabled=True, ledger_url=str(tmp_path / "ledger.sqlite3"),
                ledger_spool_dir=tmp_path / "spool", prices_file=prices, **extra)


def rows_of(path) -> list[dict]:
    db = sqlite3.connect(path)
    try:
        cur = db.execute("SELECT * FROM usage")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    finally:
        db.close()


def chat(client: httpx.Client, model: str, key: str | None, stream: bool) -> str:
    """One request with a traceparent of our own; its trace id."""
    tid = secrets.token_hex(16)
    headers = {"traceparent": f"00-{tid}-{secrets.token_hex(8)}-01"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": stream}
    r = client.post("/chat/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return tid


def check_ledger(rows: list[dict], traces: list[str], tenant: str, champion: str, challenger: str) -> None:
    """One billable row per caller request and one not billable per mirror, paired by trace id."""
    billed = {r["trace_id"]: r for r in rows if r["billable"]}
    mirrors = {r["trace_id"]: r for r in rows if not r["billable"]}
    assert len(rows) == 2 * len(traces) and set(billed) == set(mirrors) == set(traces)
    for tid in traces:
        user, mirror = billed[tid], mirrors[tid]
        assert (user["shadow"], user["model_version"], user["tenant"]) == (0, champion, tenant)
        assert (mirror["shadow"], mirror["model_version"], mirror["tenant"]) == (1, challenger, tenant)
        assert (mirror["outcome"], mirror["status"], mirror["model"]) == ("ok", 200, user["model"])
        assert mirror["subject"] == user["subject"] and mirror["request_id"] != user["request_id"]
        assert mirror["output_tokens"] > 0 and mirror["input_tokens"] > 0 and mirror["latency_s"] > 0
        # the price in force is recorded; nothing is charged
        assert (mirror["price_input_micro_per_1m"], mirror["price_output_micro_per_1m"]) == (1_000_000, 2_000_000)
        assert mirror["currency"] == "USD" and mirror["cost_micro"] == 0 and user["cost_micro"] > 0


def test_each_mirror_is_a_row_nobody_pays_for_and_the_totals_charge_the_callers_only(
        tmp_path, memory_telemetry, keyring):
    settings = ledger_settings(tmp_path, MODEL, api_keys_file=keyring.path)
    router = shadow_router(settings, EchoModel("b"), ShadowPolicy.of(1.0))
    n = 6
    with serve(create_app(settings, router=router)) as gw, httpx.Client(base_url=gw.v1, timeout=10) as client:
        traces = [chat(client, MODEL, keyring.acme, stream=i % 2 == 0) for i in range(n)]
        wait_mirrored(memory_telemetry, n)
        settle(memory_telemetry)
    rows = rows_of(tmp_path / "ledger.sqlite3")  # the app's lifespan closed the ledger: all shipped
    check_ledger(rows, traces, "acme", "1", "2")
    billed = [r for r in rows if r["billable"]]
    store = SqliteStore(tmp_path / "ledger.sqlite3")
    try:
        (acme,) = totals(store, "tenant")
        assert acme["requests"] == n and acme["cost_micro"] == sum(r["cost_micro"] for r in billed)
        assert acme["output_tokens"] == sum(r["output_tokens"] for r in billed) == n * 5
        assert "unbilled_requests" not in acme  # the default: billable figures only, as before
        (shown,) = totals(store, "tenant", include_shadow=True)
        assert {k: shown[k] for k in acme} == acme  # asking for the mirrors changes no billed figure
        assert (shown["unbilled_requests"], shown["unbilled_output_tokens"]) == (n, n * 5)
        by_model = {r["key"]: r for r in totals(store, "model", include_shadow=True)}
        assert by_model[f"{MODEL}@2"]["requests"] == 0 and by_model[f"{MODEL}@2"]["cost_micro"] is None
        assert by_model[f"{MODEL}@2"]["unbilled_requests"] == n and by_model[f"{MODEL}@1"]["unbilled_requests"] == 0
    finally:
        store.close()


class FailingModel(EchoModel):
    """A challenger whose every generation raises."""

    def predict(self, model_input):
        raise RuntimeError("the challenger broke")


def test_a_failed_mirror_is_an_error_row_nobody_pays_for(tmp_path, memory_telemetry, keyring):
    settings = ledger_settings(tmp_path, MODEL, api_keys_file=keyring.path)
    router = shadow_router(settings, FailingModel("b"), ShadowPolicy.of(1.0))
    with serve(create_app(settings, router=router)) as gw, httpx.Client(base_url=gw.v1, timeout=10) as client:
        traces = [chat(client, MODEL, keyring.acme, stream=False) for _ in range(2)]
        wait_mirrored(memory_telemetry, 2)
        settle(memory_telemetry)
    rows = rows_of(tmp_path / "ledger.sqlite3")
    mirrors = [r for r in rows if not r["billable"]]
    assert sorted(r["trace_id"] for r in mirrors) == sorted(traces)
    assert all((r["outcome"], r["status"], r["shadow"], r["cost_micro"]) == ("error", 500, 1, 0) for r in mirrors)
    assert all(r["outcome"] == "ok" and r["cost_micro"] > 0 for r in rows if r["billable"])


def test_an_existing_table_without_the_billable_column_is_migrated_and_its_rows_stay_billable(tmp_path):
    path = tmp_path / "old.sqlite3"
    old = [c for c in COLUMNS if c not in ("billable", "shadow")]
    db = sqlite3.connect(path)
    db.execute(f"CREATE TABLE usage ({', '.join(old)})")
    db.execute(f"INSERT INTO usage ({', '.join(old)}) VALUES ({', '.join('?' for _ in old)})",
               tuple(getattr(UsageRow("old-1", iso(1.7e9), "acme", "/v1/completions", "ok", 200, 3, 4,
                                      cost_micro=10, currency="USD"), c) for c in old))
    db.commit()
    db.close()
    store = SqliteStore(path)
    try:
        store.insert([UsageRow("mirror-1", iso(1.7e9), "acme", "/v1/completions", "ok", 200, 5, 6, cost_micro=0,
                               currency="USD", billable=False, shadow=True)])
        (acme,) = totals(store, "tenant", include_shadow=True)
        assert (acme["requests"], acme["output_tokens"], acme["cost_micro"]) == (1, 4, 10)
        assert (acme["unbilled_requests"], acme["unbilled_output_tokens"]) == (1, 6)
    finally:
        store.close()
    SqliteStore(path).close()  # opening a migrated table again changes nothing


def test_the_postgres_table_is_migrated_too(postgres_url):
    import psycopg2

    from gpt_observatory.serving_hooks.ledger._postgres import PostgresStore

    schema = f"old_{uuid.uuid4().hex[:8]}"
    old = [c for c in COLUMNS if c not in ("billable", "shadow")]
    conn = psycopg2.connect(postgres_url)
    with conn, conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
        cur.execute(f"SET search_path TO {schema}")
        types = {"time": "timestamptz NOT NULL", "input_tokens": "bigint", "output_tokens": "bigint",
                 "status": "integer", "cost_micro": "bigint", "latency_s": "double precision", "stream": "boolean",
                 "cached_tokens": "bigint", "ttft_s": "double precision", "gpu_seconds": "double precision",
                 "gpu_joules": "double precision", "price_input_micro_per_1m": "bigint",
                 "price_output_micro_per_1m": "bigint"}
        cols = ", ".join(f"{c} {types.get(c, 'text')}" for c in old)
        cur.execute(f"CREATE TABLE usage ({cols}, PRIMARY KEY (request_id, time)) PARTITION BY RANGE (time)")
        cur.execute("CREATE TABLE usage_2023_11 PARTITION OF usage FOR VALUES FROM ('2023-11-01') TO ('2023-12-01')")
        cur.execute("INSERT INTO usage (request_id, time, tenant, route, outcome, status, input_tokens, "
                    "output_tokens, stream, latency_s, cost_micro, currency) VALUES "
                    "('old-1', '2023-11-14T22:13:20+00', 'acme', '/v1/completions', 'ok', 200, 3, 4, false, 0.1, 10, 'USD')")
    conn.close()
    store = PostgresStore(f"{postgres_url}?options=-csearch_path%3D{schema}")
    try:
        store.insert([UsageRow("mirror-1", iso(1.7e9), "acme", "/v1/completions", "ok", 200, 5, 6, cost_micro=0,
                               currency="USD", billable=False, shadow=True)])
        (acme,) = totals(store, "tenant", include_shadow=True)
        assert (acme["requests"], acme["output_tokens"], acme["cost_micro"]) == (1, 4, 10)
        assert (acme["unbilled_requests"], acme["unbilled_output_tokens"]) == (1, 6)
    finally:
        store.close()


def test_a_row_spooled_before_the_column_existed_reads_as_billable():
    row = UsageRow("r", iso(1.7e9), "acme", "/v1/completions", "ok", 200, 1, 2)
    spooled = {k: v for k, v in orjson.loads(orjson.dumps(row)).items() if k not in ("billable", "shadow")}
    back = UsageRow.from_dict({**spooled, "a_column_from_later": 1})
    assert back == row and back.billable is True and back.shadow is False
    assert UsageRow.from_dict(orjson.loads(orjson.dumps(UsageRow(**{**spooled, "billable": False})))).billable is False


def test_with_real_mlflow_the_built_shadow_router_writes_its_mirrors_to_the_ledger(
        tmp_path, memory_telemetry, mlflow_server):
    from gpt_observatory.flows.registry import CHALLENGER, Registry
    from gpt_observatory.flows.stores import client_for
    from tests.flows.canary_support import bootstrap_champion, register

    model = f"shadow-ledger-{uuid.uuid4().hex[:8]}"
    first = register(mlflow_server.url, model, label="v1")
    second = register(mlflow_server.url, model, label="v2")
    bootstrap_champion(mlflow_server.url, model, first)
    Registry(client_for(mlflow_server.url), model).set_alias(CHALLENGER, second)
    settings = ledger_settings(tmp_path, model, backend="mlflow", tracking_uri=mlflow_server.url, shadow_share=1.0,
                               allow_anonymous=True, poll_interval_s=0.5)
    n = 4
    with serve(create_app(settings), timeout=120) as gw, httpx.Client(base_url=gw.v1, timeout=30) as client:
        def both_loaded() -> bool:
            ready = httpx.get(gw.url + "/readyz", timeout=5).json()
            return ((ready.get("model") or {}).get("version") == first
                    and ((ready.get("canary") or {}).get("challenger") or {}).get("version") == second)

        components.wait_for(both_loaded, 120, what="the champion and the challenger loaded")
        traces = [chat(client, model, None, stream=i % 2 == 1) for i in range(n)]
        wait_mirrored(memory_telemetry, n)
        settle(memory_telemetry)
    rows = rows_of(tmp_path / "ledger.sqlite3")
    check_ledger(rows, traces, "anonymous", first, second)
    assert metric(memory_telemetry, names.SHADOW_DROPPED) == 0
