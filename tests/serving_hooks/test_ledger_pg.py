"""The ledger shipping to PostgreSQL: a private cluster (initdb under a temp dir, a free port) is
stopped under load through the real gateway and started again: 0 rows lost, 0 duplicated, and the
request path does not wait on it. ``OBSERVATORY_TEST_LEDGER_OUTAGE_S`` sets the outage (default 5 s;
issue 17 asks for 30 s: run with 30 for the full check)."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest

from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.ledger import LedgerMiddleware, open_ledger
from gpt_observatory.serving_hooks.settings import load
from tests.components import free_port
from tests.serving_hooks.support import serve

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
# Read at import: the suite's autouse fixture clears OBSERVATORY_* variables before each test.
OUTAGE_S = float(os.environ.get("OBSERVATORY_TEST_LEDGER_OUTAGE_S", "5"))
pytestmark = pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL server binaries not installed")

# The app without its own ledger: these tests wrap it in one they hold (create_app wires one in
# from the settings; test_ledger_kill runs that).
UNWIRED = {"ledger_enabled": False}


class Cluster:
    """A PostgreSQL cluster of this test's own (never the machine's shared one)."""

    def __init__(self, root: Path) -> None:
        self.data = root / "pgdata"
        self.port = free_port()
        self.log = root / "pg.log"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, str(PG_BIN / args[0]), *args[1:]], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self.data.parent.mkdir(parents=True, exist_ok=True)
        if self._as:
            shutil.chown(self.data.parent, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o",
                  f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    # Not under pytest's tmp folders: they are private to root, and the server runs as 'postgres'.
    root = Path(tempfile.mkdtemp(prefix="observatory-pg-"))
    os.chmod(root, 0o755)
    c = Cluster(root)
    try:
        c.init()
        yield c
    finally:
        with contextlib.suppress(Exception):
            c.stop()
        shutil.rmtree(root, ignore_errors=True)


def _count(url: str) -> tuple[int, int]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM usage")
        return cur.fetchone()


def test_postgres_stopped_under_load_loses_and_doubles_no_row(cluster, upstream_peer, keyring, state_dir):
    outage_s = OUTAGE_S
    settings = load(backend="upstream", upstream_url=upstream_peer.url, api_keys_file=keyring.path, ledger_enabled=True,
                    upstream_models=["up-model"], ledger_url=cluster.url, ledger_ship_interval_s=0.05,
                    ledger_batch_rows=200)
    ledger = open_ledger(settings)
    ledger.start()
    phase = "before"
    latencies: dict[str, list[float]] = {"before": [], "outage": [], "after": []}
    answered = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def load_loop(base: str) -> None:
        with httpx.Client(base_url=base, timeout=10, headers={"authorization": f"Bearer {keyring.acme}"}) as http:
            while not stop.is_set():
                start = time.perf_counter()
                r = http.post("/completions", json={"model": "up-model", "prompt": "x", "max_tokens": 2})
                took = time.perf_counter() - start
                assert r.status_code == 200
                with lock:
                    answered[0] += 1
                    latencies[phase].append(took)

    with serve(LedgerMiddleware(create_app(settings.model_copy(update=UNWIRED)), ledger)) as gw:
        threads = [threading.Thread(target=load_loop, args=(gw.v1,)) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(3)
        cluster.stop("immediate")
        phase = "outage"
        time.sleep(outage_s)
        assert ledger.meters.backlog[0] > 0  # the rows wait in the spool
        cluster.start()
        phase = "after"
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join(30)
        assert ledger.flush(60)
    ledger.close()
    rows, distinct = _count(cluster.url)
    assert (rows, distinct) == (answered[0], answered[0])
    assert ledger.meters.dropped_total == 0
    before, during = statistics.median(latencies["before"]), statistics.median(latencies["outage"])
    print(f"ledger outage {outage_s:g} s: {answered[0]} requests, median latency before {before * 1e3:.2f} ms, "
          f"during {during * 1e3:.2f} ms, after {statistics.median(latencies['after']) * 1e3:.2f} ms")
    assert during < before * 1.5 + 0.002, (before, during)  # the request path never waits on PostgreSQL


def test_monthly_partitions_hold_rows_by_their_time(cluster, tmp_path):
    from gpt_observatory.serving_hooks.ledger import UsageRow, open_store
    from gpt_observatory.serving_hooks.ledger._read import totals

    store = open_store(cluster.url)
    times = ["2026-01-31T23:59:59.999999+00:00", "2026-02-01T00:00:00.000000+00:00", "2026-12-31T12:00:00.000000+00:00"]
    rows = [UsageRow(f"p{i}", t, "acme", "/v1/completions", "ok", 200, 1, 2) for i, t in enumerate(times)]
    assert store.insert(rows) == 3
    assert store.insert(rows) == 0  # idempotent
    parts = dict(store.query("SELECT tableoid::regclass::text, COUNT(*) FROM usage GROUP BY 1", []))
    assert parts == {"usage_2026_01": 1, "usage_2026_02": 1, "usage_2026_12": 1}
    assert [r["key"] for r in totals(store, "day")] == ["2026-01-31", "2026-02-01", "2026-12-31"]
    store.close()
