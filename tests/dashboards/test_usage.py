"""Live proof of the Usage and cost board and the budget and ledger rules: two ``observatory serve``
gateways with tenants, prices and the usage ledger on, in front of the fixed local upstream, scraped
every second by a real Prometheus loaded with the committed rules.

Gateway A ships its ledger to SQLite. Tenant acme has a small budget at A: four requests pass, then
429 insufficient_quota. Gateway B's ledger store is a PostgreSQL nobody runs (every batch fails) and
its spool is capped small, so rows pile up and then are dropped (spool_error). Every panel query,
template variable and rule of the board and of the budget and ledger groups is then evaluated on
Prometheus and must return data, and the figures must be the traffic's: spend per tenant equals what
the callers' usage costs at the price and, at A, the ledger's own cost total; budget used is the
tenant's spend over its budget; rows dropped and ship failures only at B. Nothing is pushed or faked.

The GPU energy panels wait for a GPU there; the last test runs them on a real Prometheus scraping the real
gateway with an in-process model on a fake NVML (tests/telemetry/fake_nvml.py), the one thing not real.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gpt_observatory.dashboards import events, metering_rules
from gpt_observatory.dashboards import series as s
from gpt_observatory.dashboards.artefacts import ROOT
from gpt_observatory.dashboards.boards import usage
from gpt_observatory.dashboards.promql import instant
from gpt_observatory.dashboards.query import sel
from gpt_observatory.dashboards.rules import Alert, groups
from gpt_observatory.dashboards.scrape import RULE_FILE, scrape_config
from gpt_observatory.dashboards.verify import LiveQuery, evaluate, live_queries, query, report
from gpt_observatory.demo.upstream import UpstreamPeer
from gpt_observatory.serving_hooks.apikeys import ApiKeyStore
from gpt_observatory.telemetry import names
from tests import components
from tests.dashboards.conftest import prometheus_with

OBSERVATORY = [sys.executable, "-c", "from gpt_observatory.cli import main; main()"]
MODEL = "up-model"  # the catalog's name (prices are by catalog name) and the upstream's
PRICE_IN, PRICE_OUT = 2, 3  # micro-units a token (2 and 3 USD per 1M tokens)
BUDGET_MICRO = 200  # acme's budget at A: each request's worst case is ~36, its real cost 44 (7 + 10 tokens)
TENANTS = f"""[[tenants]]
name = "acme"
budget = {{ amount = "{BUDGET_MICRO / 1_000_000:.6f}", period = "day" }}
[[tenants]]
name = "globex"
"""
PRICES = f"""[[prices]]
model = "{MODEL}"
effective_from = 2026-01-01T00:00:00Z
currency = "USD"
input_per_1m = "{PRICE_IN}"
output_per_1m = "{PRICE_OUT}"
"""
GROUPS = (metering_rules.BUDGETS_GROUP, metering_rules.LEDGER_GROUP)
# A budget store that fails is no part of this run: test_live.py runs a gateway whose Redis is down.
ELSEWHERE = {'alert "BudgetStoreFailing"'}


GPU_PANELS = {f'usage: panel "{p.title}"' for p in usage.board().panels() if p.needs == events.GPU}


def is_usage(q: LiveQuery) -> bool:
    """The usage board's queries and the budget and ledger groups' rules (but ELSEWHERE)."""
    rules = {f'alert "{r.alert}"' if isinstance(r, Alert) else f'record "{r.record}"'
             for g in groups() if g.name in GROUPS for r in g.rules}
    return q.where.startswith("usage: ") or (q.where in rules and q.where not in ELSEWHERE)


class Tally:
    """What the callers were answered: tokens and cost per tenant, from each response's usage."""

    def __init__(self) -> None:
        self.tokens: dict[tuple[str, str], int] = {}
        self.cost: dict[str, int] = {}
        self.statuses: list[int] = []
        self._lock = threading.Lock()

    def chat(self, client: httpx.Client, url: str, tenant: str, key: str, stream: bool = False) -> int:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 10,
                "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}
        with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                           headers={"authorization": f"Bearer {key}"}) as r:
            text = r.read().decode()
        used = None
        if r.status_code == 200:
            chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
            used = next(c["usage"] for c in reversed(chunks) if c.get("usage")) if stream else json.loads(text)["usage"]
        with self._lock:
            self.statuses.append(r.status_code)
            if used is not None:
                for kind, n in ((names.GEN_AI_TOKEN_TYPE_INPUT, used["prompt_tokens"]),
                                (names.GEN_AI_TOKEN_TYPE_OUTPUT, used["completion_tokens"])):
                    self.tokens[(tenant, kind)] = self.tokens.get((tenant, kind), 0) + n
                cost = PRICE_IN * used["prompt_tokens"] + PRICE_OUT * used["completion_tokens"]
                self.cost[tenant] = self.cost.get(tenant, 0) + cost
        return r.status_code


def _gateway(tmp: Path, name: str, port: int, upstream: str, keys: Path, **ledger: str) -> subprocess.Popen:
    env = {"OBSERVATORY_STATE_DIR": str(tmp / name), "OBSERVATORY_GPU_ENABLED": "false", "OTEL_LOGS_EXPORTER": "none",
           "OBSERVATORY_SERVE_UPSTREAM_MODELS": MODEL, "OBSERVATORY_SERVE_TENANTS_FILE": str(tmp / "tenants.toml"),
           "OBSERVATORY_SERVE_PRICES_FILE": str(tmp / "prices.toml"), "OBSERVATORY_SERVE_LEDGER_ENABLED": "true",
           "OBSERVATORY_SERVE_LEDGER_SPOOL_DIR": str(tmp / name / "spool"),
           **{f"OBSERVATORY_SERVE_LEDGER_{k.upper()}": v for k, v in ledger.items()}}
    return components.start_process(
        [*OBSERVATORY, "serve", "--backend", "upstream", "--upstream-url", upstream, "--model", MODEL,
         "--api-keys-file", str(keys), "--port", str(port)], tmp / f"{name}.log", env)


def _values(prom: str, expr: str, *labels: str, at: float | None = None) -> dict[tuple[str, ...], float]:
    """An instant query's samples (at time ``at``, default now) by the values of ``labels``."""
    params = {"query": instant(expr), **({"time": f"{at:.3f}"} if at is not None else {})}
    body = httpx.get(f"{prom}/api/v1/query", params=params, timeout=10).json()
    assert body["status"] == "success", body
    return {tuple(r["metric"].get(k, "") for k in labels): float(r["value"][1]) for r in body["data"]["result"]}


def _metric_total(text: str, series: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + "{"))


def test_every_usage_panel_and_ledger_rule_returns_the_traffics_figures(tmp_path: Path, artifacts_dir: Path):
    keys = ApiKeyStore(tmp_path / "keys.json")
    acme, _ = keys.create("acme", ["inference"])
    globex, _ = keys.create("globex", ["inference"])
    (tmp_path / "tenants.toml").write_text(TENANTS)
    (tmp_path / "prices.toml").write_text(PRICES)
    a_port, b_port, dead_pg = components.free_port(), components.free_port(), components.free_port()
    a, b = f"127.0.0.1:{a_port}", f"127.0.0.1:{b_port}"
    ledger_a = tmp_path / "ledger-a.sqlite3"
    config = scrape_config(gateway=[a, b], gpu=[], pushgateway=[], collector=[], vllm=[], interval="1s",
                           rule_files=(str(ROOT / "prometheus" / RULE_FILE),))
    tally = Tally()
    procs: list[subprocess.Popen] = []
    with UpstreamPeer() as peer, prometheus_with(tmp_path / "prom", config) as prom:
        try:
            procs.append(_gateway(tmp_path, "a", a_port, peer.url, keys.path, url=str(ledger_a)))
            procs.append(_gateway(tmp_path, "b", b_port, peer.url, keys.path,
                                  url=f"postgresql://observatory@127.0.0.1:{dead_pg}/ledger", spool_max_mb="0.05"))
            for proc, where, name in ((procs[0], a, "a"), (procs[1], b, "b")):
                components.wait_http(f"http://{where}/healthz", timeout=90, proc=proc, log=tmp_path / f"{name}.log")
            cost = sel(s.total(names.USAGE_COST), f'{s.INSTANCE}="{a}"')
            # Both spools scraped empty before any traffic: the backlog's lowest in the window is 0.
            components.wait_for(lambda: _values(prom.url, usage.SPOOL_ROWS, s.INSTANCE) == {(a,): 0, (b,): 0}, 30,
                                what="both spools scraped empty")
            with httpx.Client(timeout=30) as client:
                # One priced request per tenant and gateway first, scraped before the rest: each cost series'
                # increase() over the range then starts from a sample Prometheus has (a counter's first value
                # is invisible to it), so the rest's cost is its lower bound below.
                assert tally.chat(client, f"http://{a}", "acme", acme) == 200
                assert tally.chat(client, f"http://{a}", "globex", globex) == 200
                assert tally.chat(client, f"http://{b}", "globex", globex) == 200
                first = dict(tally.cost)
                components.wait_for(lambda: len(query(prom.url, s.total(names.USAGE_COST))) == 3, 30,
                                    what="the first costs scraped")
                # acme spends its budget at A: 44 micro-units a request against 200, worst case ~36.
                spending = [tally.chat(client, f"http://{a}", "acme", acme, stream=i % 2 == 1) for i in range(5)]
                assert spending == [200, 200, 200, 429, 429], spending
                for i in range(6):
                    assert tally.chat(client, f"http://{a}", "globex", globex, stream=i % 2 == 1) == 200

                # B: rows wait in its spool (the store is down) until the spool is full, then are dropped.
                def dropped() -> float:
                    return _metric_total(client.get(f"http://{b}/metrics").text, s.total(names.LEDGER_ROWS_DROPPED))

                def to_b(n: int) -> None:
                    with httpx.Client(timeout=30) as own:
                        for _ in range(n):
                            tally.chat(own, f"http://{b}", "globex", globex)

                sent = 0
                while not dropped():
                    assert sent < 2000, "B's spool never filled"
                    burst = [threading.Thread(target=to_b, args=(10,)) for _ in range(4)]
                    for t in burst:
                        t.start()
                    for t in burst:
                        t.join()
                    sent += 40
                assert set(tally.statuses) == {200, 429} and tally.statuses.count(429) == 2

            # Everything scraped, A's ledger shipped (its backlog back to 0), rules run on it.
            expected = sum(tally.cost.values())
            every_cost = s.total(names.USAGE_COST)
            components.wait_for(lambda: sum(_values(prom.url, f"sum({every_cost})").values()) == expected, 30,
                                what="the last costs scraped")
            # A's ledger shipped: every row written there shipped (the shipper process ships a segment once its
            # writer moved on, about a second later), and its backlog scraped back to 0.
            at_a = f'{s.INSTANCE}="{a}"'
            written_a, shipped_a = (sel(s.total(m), at_a) for m in (names.LEDGER_ROWS_WRITTEN, names.LEDGER_ROWS_SHIPPED))
            components.wait_for(lambda: (w := sum(_values(prom.url, f"sum({written_a})").values())) > 0
                                and sum(_values(prom.url, f"sum({shipped_a})").values()) == w
                                and _values(prom.url, usage.SPOOL_ROWS, s.INSTANCE).get((a,)) == 0, 30,
                                what="A's ledger shipped")
            components.wait_for(lambda: query(prom.url, metering_rules.BUDGET_USED), 30, what="budget rules run")
            # Counters that appeared last (B's drops and ship failures, acme's refusals) scraped twice at least
            # since they did, so their rates have two samples.
            born = [s.total(names.LEDGER_ROWS_DROPPED), s.total(names.LEDGER_SHIP_FAILURES), shipped_a,
                    sel(s.total(names.GATEWAY_REJECTIONS), usage.BUDGET_REFUSED)]
            components.wait_for(lambda: all(_values(prom.url, f"min(count_over_time({c}[1m]))").get((), 0) >= 2
                                            for c in born), 30, what="the last counters scraped twice")
            queries = [q for q in live_queries() if is_usage(q)]
            outcomes = evaluate(prom.url, queries)
            at = time.time()  # every figure at one time: increase() and rate() move with it
            figures = {title: _values(prom.url, q.expr, *labels, at=at) for title, q, labels in _panels()}
            usage_out = subprocess.run([*OBSERVATORY, "usage", "--ledger", str(ledger_a), "--format", "json"],
                                       capture_output=True, text=True, timeout=60, check=True).stdout
            cost_at_a = _values(prom.url, f"sum by ({s.TENANT}) ({cost})", s.TENANT)
        finally:
            for p in procs:
                components.stop_process(p)

    rep = report(outcomes, {e.key for e in events.USAGE_EVENTS}, artifacts_dir / "dashboards" / "usage-report.json")
    print("\n".join(rep.lines))
    assert not rep.unexpected, "\n".join(f"{o.query.where}: {o.error or 'no data'}\n  {o.query.expr}"
                                         for o in rep.unexpected)
    # The GPU energy panels wait for a GPU (test_the_gpu_energy_panels_... below runs them on a fake one).
    assert {o.query.where.split(" query")[0] for o in rep.waiting} == GPU_PANELS and len(outcomes) == len(queries)
    assert all(events.GPU.key in o.query.needs for o in rep.waiting)
    assert {o.query.where.split(" query")[0] for o in outcomes if o.query.where.startswith("usage: panel")} == {
        f'usage: panel "{p.title}"' for p in usage.board().panels()}

    # Spend: the counter is what the ledger holds at A, and over both gateways what the callers' usage costs.
    ledger_cost = {r["key"]: r["cost_micro"] for r in json.loads(usage_out)["rows"]}
    assert cost_at_a == {(t,): float(c) for t, c in ledger_cost.items()} and set(ledger_cost) == {"acme", "globex"}
    for tenant, total in tally.cost.items():
        since_first = total - first[tenant]
        ranged = figures["Spend per tenant in the time range"][(tenant, "USD")] * 1_000_000
        assert since_first - 1e-6 <= ranged <= 1.5 * total, (tenant, ranged, total)  # increase() extrapolates
        assert figures["Spend per tenant (per hour)"][(tenant, "USD")] > 0
    by_model = figures["Spend per model in the time range"]
    assert set(by_model) == {(MODEL, "USD")}
    assert abs(by_model[(MODEL, "USD")] - sum(figures["Spend per tenant in the time range"].values())) < 1e-9
    # Tokens: each tenant's input and output, as the callers were answered.
    tokens = figures["Tokens per tenant in the time range"]
    assert set(tokens) == set(tally.tokens)
    for key, total in tally.tokens.items():
        assert 0 < tokens[key] <= 1.5 * total, (key, tokens[key], total)
    # Budgets: acme's four requests over its budget (globex has none); its refusals and nobody else's.
    used = figures["Budget used per tenant"]
    assert used == {("acme",): tally.cost["acme"] / BUDGET_MICRO} and 0.8 < used[("acme",)] < 1
    assert set(figures["Requests refused for their budget"]) == {("acme",)}
    # The ledger: A writes and ships, B writes until its spool is full, then drops; only B fails to ship.
    written, shipped = figures["Ledger rows written and shipped A"], figures["Ledger rows written and shipped B"]
    assert set(written) == {(a,), (b,)} and set(shipped) == {(a,)}
    assert set(figures["Ledger rows dropped by reason"]) == {(b, "spool_error")}
    assert set(figures["Ledger ship failures"]) == {(b,)}
    backlog, lag = figures["Ledger spool backlog"], figures["Ledger lag"]
    assert backlog[(a,)] == 0 and backlog[(b,)] > 0 and lag[(a,)] == 0 and lag[(b,)] > 0
    # The rules' conditions now: budget nearly spent and exhausted (refused), rows dropped, shipping failing
    # (for 5 minutes before it fires); the lag is under a minute and B's spool was empty 5 minutes ago.
    holds = {o.query.where for o in outcomes if o.firing}
    assert {'alert "BudgetNearlySpent"', 'alert "BudgetExhausted"', 'alert "LedgerRowsDropped"',
            'alert "LedgerShipFailing"'} <= holds, holds
    assert not holds & {'alert "LedgerLagHigh"', 'alert "LedgerSpoolGrowing"'}, holds


def _panels() -> list[tuple[str, LiveQuery, tuple[str, ...]]]:
    """(title, query, labels to key its samples by) of the panels the figures above read."""
    board = {p.title: p for p in usage.board().panels()}
    keyed = {
        "Spend per tenant (per hour)": (s.TENANT, s.CURRENCY),
        "Spend per tenant in the time range": (s.TENANT, s.CURRENCY),
        "Spend per model in the time range": (s.CATALOG_MODEL, s.CURRENCY),
        "Tokens per tenant in the time range": (s.TENANT, s.TOKEN_TYPE),
        "Budget used per tenant": (s.TENANT,),
        "Requests refused for their budget": (s.TENANT,),
        "Ledger rows dropped by reason": (s.INSTANCE, s.LEDGER_REASON),
        "Ledger ship failures": (s.INSTANCE,),
        "Ledger spool backlog": (s.INSTANCE,),
        "Ledger lag": (s.INSTANCE,),
    }
    out = [(title, LiveQuery(title, board[title].queries[0].expr), labels) for title, labels in keyed.items()]
    written, shipped = board["Ledger rows written and shipped"].queries
    out += [("Ledger rows written and shipped A", LiveQuery("", written.expr), (s.INSTANCE,)),
            ("Ledger rows written and shipped B", LiveQuery("", shipped.expr), (s.INSTANCE,))]
    return out


def _scraped(url: str, series: str, label: str, **match: str) -> dict[str, float]:
    """A counter's value per ``label`` on the gateway's own /metrics (samples matching ``match``), summed over
    its other labels."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == series and all(sample.labels.get(k) == v for k, v in match.items()):
                out[sample.labels[label]] = out.get(sample.labels[label], 0.0) + sample.value
    return out


def test_the_gpu_energy_panels_on_a_real_prometheus_scraping_a_gateway_on_a_fake_gpu(tmp_path: Path):
    """The GPU panels on a real Prometheus scraping the real gateway, whose in-process model says it runs on
    a GPU whose NVML energy counter is a fake drawing 400 W. Two rounds of traffic from two tenants; over the
    second, J per output token is what the gateway's /metrics say each tenant's energy and output tokens
    rose by, divided; every GPU panel has data, by the labels it names."""
    from gpt_observatory import telemetry
    from tests.serving_hooks.support import serve, settle
    from tests.telemetry.test_gpu_energy import GpuEcho, PoweredNvml, _app, _send

    handle = telemetry.configure("usage-energy", metrics_exporter=["memory", "prometheus"], prometheus_serve=False,
                                 traces_exporter=["none"], logs_exporter=["none"], gpu_enabled=False)
    app, _, tokens = _app(tmp_path, GpuEcho(delay_s=0.002), PoweredNvml())
    output = {s.TOKEN_TYPE: names.GEN_AI_TOKEN_TYPE_OUTPUT}
    board = {p.title: p for p in usage.board().panels()}
    with serve(app) as gw:
        config = scrape_config(gateway=[gw.url.removeprefix("http://")], gpu=[], pushgateway=[], collector=[],
                               vllm=[], interval="1s", rule_files=())
        with prometheus_with(tmp_path / "prom", config) as prom:

            def at_rest() -> tuple[dict[str, float], dict[str, float], float]:
                """Both tenants' traffic; what the gateway counted; a time after which Prometheus scraped that."""
                _send(gw.v1, tokens)
                settle(handle)
                joules = _scraped(gw.url, usage.ENERGY, s.TENANT)
                out = _scraped(gw.url, s.total(names.GATEWAY_TOKENS), s.TENANT, **output)
                components.wait_for(lambda: _values(prom.url, f"sum by ({s.TENANT}) ({usage.ENERGY})", s.TENANT)
                                    == {(t,): j for t, j in joules.items()}, 30, what="the energy scraped")
                since = time.time()
                components.wait_for(lambda: _values(prom.url, f"min(timestamp({usage.ENERGY}))").get((), 0) > since,
                                    30, what="a scrape after that")
                return joules, out, since

            e1, o1, since = at_rest()  # each counter is born here: its first value is invisible to rate()
            e2, o2, _ = at_rest()
            assert set(e1) == set(o1) == set(tokens) and all(e2[t] > e1[t] > 0 and o2[t] > o1[t] for t in tokens)
            queries = [q for q in live_queries() if q.where.startswith("usage: ") and events.GPU.key in q.needs]
            outcomes = evaluate(prom.url, queries)
            at = time.time()
            window = {"__rate_interval": f"{math.ceil((at - since) * 1000)}ms"}  # round 2, from a sample at rest
            per_token = _values(prom.url, instant(board["GPU energy per output token per tenant"].queries[0].expr,
                                                  window), s.TENANT, at=at)
            figures = {title: _values(prom.url, board[title].queries[0].expr, *labels) for title, labels in (
                ("GPU-seconds per second per tenant and model version", usage.VERSIONED),
                ("GPU-seconds per tenant and model version in the time range", usage.VERSIONED),
                ("GPU energy per tenant in the time range", usage.VERSIONED))}
            power = [_values(prom.url, q.expr, s.INSTANCE) for q in board["GPU energy attributed and idle"].queries]
    rep = report(outcomes, {events.GPU.key})
    print("\n".join(rep.lines))
    assert not rep.unexpected and not rep.waiting, [o.query.where for o in rep.unexpected + rep.waiting]
    assert {o.query.where.split(" query")[0] for o in outcomes} == GPU_PANELS
    for tenant in tokens:
        expected = (e2[tenant] - e1[tenant]) / (o2[tenant] - o1[tenant])
        assert math.isclose(per_token[(tenant,)], expected, rel_tol=1e-6), (tenant, per_token, expected)
    assert set(per_token) == {(t,) for t in tokens}
    for title, values in figures.items():
        assert set(values) == {(t, "tiny-gpt", "7") for t in tokens} and all(v > 0 for v in values.values()), title
    attributed, idle = power  # the fake GPU draws power between the rounds too: that is nobody's
    assert set(attributed) == set(idle) == {(gw.url.removeprefix("http://"),)}
    assert all(v > 0 for v in (*attributed.values(), *idle.values())), power
