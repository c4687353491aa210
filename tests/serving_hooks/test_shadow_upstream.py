"""Shadow traffic for an upstream catalog model: an ``upstream`` entry's ``shadow_replicas`` pool gets a
copy of the shadow tenants' requests after the champion's pool answered; callers only see the champion,
mirrors are neither metered nor billed (one billable ledger row per request, one that is not per
mirror), and a challenger pool that is down or hangs costs mirrors (counted), never a caller's request.
Real replica processes (``gpt_observatory.demo.upstream``), the real gateway on real uvicorn, a real
ledger; the catalog's checks of the new keys."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gpt_observatory.serving_hooks import catalog as catalog_mod
from gpt_observatory.serving_hooks._catalog_backends import build_entry
from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.backends.shadow import ShadowRouter
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.settings import ConfigError
from tests import components
from tests.serving_hooks.replica_procs import ReplicaProcess, replicas
from tests.serving_hooks.support import point_value, serve, settle

MODEL = "llama"
CHALLENGER = "llama-next"
MAX_TOKENS = 4
PRICES = '''
[[prices]]
model = "llama"
effective_from = 2026-01-01T00:00:00Z
currency = "USD"
input_per_1m = "1"
output_per_1m = "2"
'''


@pytest.fixture(scope="module")
def peers(tmp_path_factory) -> Iterator[tuple[ReplicaProcess, ReplicaProcess]]:
    """Two replica processes: the champion's pool and the challenger's."""
    with replicas(2, log_dir=tmp_path_factory.mktemp("peers")) as (champion, challenger):
        yield champion, challenger


def catalog(tmp_path: Path, champion: str, challenger: str, *, extra: str = "", pool: str = "") -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(
        f'[[models]]\nname = "{MODEL}"\nkind = "upstream"\nreplicas = [{{ url = "{champion}" }}]\n'
        f'shadow_share = 0.25\nshadow_tenants = ["acme"]\nshadow_replicas = [{{ url = "{challenger}" }}]\n'
        f'shadow_upstream_model = "{CHALLENGER}"\n{extra}' + (f"[models.pool]\n{pool}\n" if pool else ""))
    return path


def settings_for(tmp_path: Path, keyring, path: Path, **extra):
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    given = {"ledger_enabled": True, "ledger_url": str(tmp_path / "ledger.sqlite3"),
             "ledger_spool_dir": tmp_path / "spool", **extra}
    return load(catalog_file=path, api_keys_file=keyring.path, prices_file=prices, **given)


def ask(client: httpx.Client, key: str, stream: bool) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS,
            "stream": stream}
    return client.post("/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})


def answered_by(r: httpx.Response) -> str:
    """The model id the upstream that answered was asked under (the peer echoes it)."""
    assert r.status_code == 200, r.text
    if r.headers["content-type"].startswith("text/event-stream"):
        return httpx.Response(200, content=r.text.split("data: ", 2)[1].strip()).json()["model"]
    return r.json()["model"]


def metric(handle, m: names.Metric, **attrs) -> float:
    return point_value(handle.memory.metrics().get(m.name, []), **attrs)


def seen_models(peer: ReplicaProcess) -> list[str]:
    return [s["body"].get("model") for s in httpx.get(f"http://127.0.0.1:{peer.port}/_seen", timeout=5).json()]


def rows_of(path: Path) -> list[dict]:
    db = sqlite3.connect(path)
    try:
        cur = db.execute("SELECT * FROM usage")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    finally:
        db.close()


CHALLENGER_SIDE = {names.MODEL_ROLE: names.MODEL_ROLE_CHALLENGER}


def test_the_shadow_tenants_requests_are_mirrored_to_the_challenger_pool_and_never_billed(
        tmp_path, peers, memory_telemetry, keyring):
    champion, challenger = peers
    before = len(seen_models(champion)), len(seen_models(challenger))
    settings = settings_for(tmp_path, keyring, catalog(tmp_path, champion.url, challenger.url))
    n = 8
    with serve(create_app(settings)) as gw, httpx.Client(base_url=gw.url + "/v1", timeout=10) as client:
        answers = [ask(client, keyring.acme, stream=i % 2 == 0) for i in range(n)]
        ready = httpx.get(gw.url + "/readyz").json()
        components.wait_for(lambda: metric(memory_telemetry, names.SHADOW_REQUEST_DURATION, **CHALLENGER_SIDE) >= n,
                            30, what=f"{n} mirrors answered by the challenger pool")
        settle(memory_telemetry)
    assert [answered_by(r) for r in answers] == [MODEL] * n, "every caller got the champion pool's answer"
    assert seen_models(champion)[before[0]:] == [MODEL] * n
    assert seen_models(challenger)[before[1]:] == [CHALLENGER] * n, "each mirror went to the challenger pool only"
    assert ready["canary"]["source"] == "shadow"
    assert ready["canary"]["challenger"] == {"name": f"{MODEL}/shadow", "version": CHALLENGER, "alias": None}
    for role, version in ((names.MODEL_ROLE_CHAMPION, MODEL), (names.MODEL_ROLE_CHALLENGER, CHALLENGER)):
        side = {names.MODEL_ROLE: role, names.MODEL_VERSION: version, names.GEN_AI_REQUEST_MODEL: MODEL}
        assert metric(memory_telemetry, names.SHADOW_REQUEST_DURATION, **side) == n
        assert metric(memory_telemetry, names.SHADOW_TIME_TO_FIRST_TOKEN, **side) == n / 2  # the streams
        assert metric(memory_telemetry, names.SHADOW_OUTPUT_TOKENS, **side) > 0
    assert metric(memory_telemetry, names.SHADOW_COMPARISONS, **{names.SHADOW_MATCH: "exact"}) == n  # one fixed text
    mirrors = [s for s in memory_telemetry.memory.spans() if s.name == names.SPAN_SHADOW]
    assert len(mirrors) == n and all(s.attributes[names.SHADOW] is True and s.parent is None for s in mirrors)

    rows = rows_of(tmp_path / "ledger.sqlite3")
    billed = [r for r in rows if r["billable"]]
    unbilled = [r for r in rows if not r["billable"]]
    assert len(billed) == len(unbilled) == n
    assert {r["trace_id"] for r in billed} == {r["trace_id"] for r in unbilled}, "each mirror is paired with its request"
    assert all((r["shadow"], r["tenant"], r["model"]) == (0, "acme", MODEL) and r["cost_micro"] > 0 for r in billed)
    for row in unbilled:
        assert (row["shadow"], row["tenant"], row["model"], row["model_version"]) == (1, "acme", MODEL, CHALLENGER)
        assert (row["outcome"], row["status"], row["cost_micro"]) == ("ok", 200, 0) and row["output_tokens"] > 0
    # The tenant is metered for the champion's answers only.
    output = {names.TENANT: "acme", names.GEN_AI_TOKEN_TYPE: names.GEN_AI_TOKEN_TYPE_OUTPUT}
    assert metric(memory_telemetry, names.GATEWAY_TOKENS, **output) == sum(r["output_tokens"] for r in billed)
    assert metric(memory_telemetry, names.GATEWAY_REQUESTS, **{names.TENANT: "acme"}) == n


def test_a_challenger_pool_that_is_down_fails_or_drops_mirrors_and_no_caller(tmp_path, peers, memory_telemetry, keyring):
    champion, _ = peers
    down = f"http://127.0.0.1:{components.free_port()}/v1"  # nothing listens there
    settings = settings_for(tmp_path, keyring, catalog(tmp_path, champion.url, down, pool="probe_interval_s = 0"))
    n = 10
    with serve(create_app(settings)) as gw, httpx.Client(base_url=gw.url + "/v1", timeout=10) as client:
        answers = [ask(client, keyring.acme, stream=i % 2 == 1) for i in range(n)]

        def accounted() -> float:
            return (metric(memory_telemetry, names.SHADOW_REQUEST_DURATION, **CHALLENGER_SIDE)
                    + metric(memory_telemetry, names.SHADOW_DROPPED))
        components.wait_for(lambda: accounted() >= n, 30, what="every mirror failed or dropped")
        settle(memory_telemetry)
    assert [answered_by(r) for r in answers] == [MODEL] * n
    failed = metric(memory_telemetry, names.SHADOW_REQUEST_DURATION, **CHALLENGER_SIDE)
    dropped = metric(memory_telemetry, names.SHADOW_DROPPED, **{names.SHADOW_DROP_REASON: "no_challenger"})
    assert failed + dropped == n and failed >= 1  # failures until the replica is ejected, then drops
    errors = [p for p in memory_telemetry.memory.metrics()[names.SHADOW_REQUEST_DURATION.name]
              if p.attributes.get(names.MODEL_ROLE) == names.MODEL_ROLE_CHALLENGER]
    assert all(names.ERROR_TYPE in p.attributes for p in errors)
    rows = rows_of(tmp_path / "ledger.sqlite3")
    assert sum(1 for r in rows if r["billable"] and r["outcome"] == "ok") == n
    unbilled = [r for r in rows if not r["billable"]]
    assert len(unbilled) == failed and all(r["outcome"] == "error" and r["cost_micro"] == 0 for r in unbilled)


@contextlib.contextmanager
def hanging_server() -> Iterator[str]:
    """A port that takes connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        sock.close()


def test_a_hanging_challenger_pool_fills_its_queue_mirrors_are_dropped_and_no_caller_waits(
        tmp_path, peers, memory_telemetry, keyring):
    champion, _ = peers
    n = 6
    with hanging_server() as stuck:
        path = catalog(tmp_path, champion.url, stuck, extra="shadow_concurrency = 1\n", pool="probe_interval_s = 0")
        settings = settings_for(tmp_path, keyring, path, shadow_queue_size=1, ledger_enabled=False)
        with serve(create_app(settings)) as gw, httpx.Client(base_url=gw.url + "/v1", timeout=10) as client:
            answers = [ask(client, keyring.acme, stream=i % 2 == 0) for i in range(n)]
            settle(memory_telemetry)
            dropped = metric(memory_telemetry, names.SHADOW_DROPPED, **{names.SHADOW_DROP_REASON: "queue_full"})
    assert [answered_by(r) for r in answers] == [MODEL] * n
    # One mirror stuck in the challenger pool, one waiting, the rest dropped and counted.
    assert dropped == n - 2


# ------------------------------------------------------------------ the catalog's checks
UP = {"name": MODEL, "kind": "upstream", "replicas": [{"url": "http://a:8000/v1"}]}
SHADOW = {"shadow_share": 0.25, "shadow_replicas": [{"url": "http://b:8000/v1"}]}


@pytest.mark.parametrize(("table", "says"), [
    ({**UP, "shadow_share": 0.5}, "shadow_share of an upstream model needs shadow_replicas"),
    ({**UP, "shadow_tenants": ["acme"]}, "shadow_tenants of an upstream model needs shadow_replicas"),
    ({**UP, "shadow_replicas": [{"url": "http://b:8000/v1"}]}, "shadow_replicas need shadow_share"),
    ({**UP, "shadow_upstream_model": "x", "shadow_concurrency": 2}, "shadow_upstream_model, shadow_concurrency need"),
    ({**UP, **SHADOW, "shadow_concurrency": 0}, "shadow_concurrency"),
    ({**UP, **SHADOW, "shadow_replicas": [{"url": "ftp://b"}]}, "shadow_replicas.0.url"),
    ({**UP, **SHADOW, "shadow_replicas": [{"url": "http://b:1/v1", "key": "x"}]}, "shadow_replicas.0.key: unknown key"),
    ({**UP, **SHADOW, "shadow_share": 1.5}, "shadow_share"),
    ({**UP, **SHADOW, "canary_share": 0.1}, "canary_share do not apply to kind 'upstream'"),
    ({"name": MODEL, "kind": "mlflow", "shadow_share": 0.1, "shadow_replicas": [{"url": "http://b:1/v1"}]},
     "shadow_replicas do not apply to kind 'mlflow'"),
])
def test_bad_upstream_shadow_keys_are_refused_naming_the_key(table, says):
    with pytest.raises(ConfigError, match="llama") as err:
        catalog_mod.parse({"models": [table]}, load(), source="cat.toml")
    assert says in str(err.value)


def test_the_built_router_of_an_upstream_shadow_entry():
    settings = load()
    pooled = catalog_mod.parse({"models": [{**UP, **SHADOW}]}, settings)
    router = build_entry(pooled.entries[0], pooled)
    assert isinstance(router, ShadowRouter)
    assert router.policy.concurrency == 4 and router.policy.share == 0.25
    assert router.backends["challenger"].model == f"{MODEL}/shadow" and router.champion.model == MODEL
    assert (router.version("champion"), router.version("challenger")) == (MODEL, MODEL)  # the default id
    one = catalog_mod.parse({"models": [{"name": MODEL, "kind": "upstream", "url": "http://a:8000/v1",
                                         "upstream_model": "l3", **SHADOW, "shadow_upstream_model": "l4"}]}, settings)
    router = build_entry(one.entries[0], one)
    assert isinstance(router, ShadowRouter) and (router.version("champion"), router.version("challenger")) == ("l3", "l4")
    twice = {**UP, **SHADOW, "shadow_replicas": [{"url": "http://b:1/v1", "name": "b"}, {"url": "http://c:1/v1", "name": "b"}]}
    dup = catalog_mod.parse({"models": [twice]}, settings, source="cat.toml")
    with pytest.raises(ConfigError, match="replica names must be unique"):
        build_entry(dup.entries[0], dup)
    plain = catalog_mod.parse({"models": [UP]}, settings)
    assert not isinstance(build_entry(plain.entries[0], plain), ShadowRouter)
