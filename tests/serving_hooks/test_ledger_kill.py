"""SIGKILL of the gateway under load: every request whose response the caller saw complete is in the
ledger once the next process started (its rows were in the spool; the store had not seen them)."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
import time

import httpx

from gpt_observatory.serving_hooks.ledger import open_ledger
from gpt_observatory.serving_hooks.ledger._sqlite import SqliteStore
from gpt_observatory.serving_hooks.settings import load
from tests.components import free_port, start_process, wait_http

GATEWAY = """
import sys, uvicorn
from gpt_observatory.serving_hooks.app import create_app
from gpt_observatory.serving_hooks.settings import load
uvicorn.run(create_app(load()), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")  # its own ledger
"""


def test_sigkill_under_load_loses_no_completed_request(upstream_peer, keyring, tmp_path, state_dir):
    env = {
        "OBSERVATORY_SERVE_BACKEND": "upstream", "OBSERVATORY_SERVE_UPSTREAM_URL": upstream_peer.url,
        "OBSERVATORY_SERVE_API_KEYS_FILE": str(keyring.path), "OBSERVATORY_SERVE_UPSTREAM_MODELS": "up-model",
        "OBSERVATORY_SERVE_LEDGER_ENABLED": "true", "OBSERVATORY_SERVE_LEDGER_URL": str(tmp_path / "ledger.sqlite3"),
        "OBSERVATORY_SERVE_LEDGER_SHIP_INTERVAL_S": "30",  # nothing shipped before the kill: all from the spool
        "OBSERVATORY_STATE_DIR": str(state_dir),
    }
    port = free_port()
    proc = start_process([sys.executable, "-c", GATEWAY, str(port)], tmp_path / "gateway.log", env=env)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc, log=tmp_path / "gateway.log")
    completed: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load_loop(stream: bool) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=10,
                          headers={"authorization": f"Bearer {keyring.acme}"}) as http:
            while not stop.is_set():
                tid = secrets.token_hex(16)
                body = {"model": "up-model", "prompt": "x", "max_tokens": 3, "stream": stream}
                try:
                    with http.stream("POST", "/completions", json=body,
                                     headers={"traceparent": f"00-{tid}-{secrets.token_hex(8)}-01"}) as r:
                        r.read()  # to the response's end: a cut one raises
                        done = r.status_code == 200
                except httpx.HTTPError:
                    done = False
                if done:
                    with lock:
                        completed.append(tid)

    threads = [threading.Thread(target=load_loop, args=(i % 2 == 1,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    assert len(completed) > 50

    os.environ.update(env)  # the next start, on the same spool and store
    try:
        ledger = open_ledger(load(ledger_enabled=True))
    finally:
        for key in env:
            os.environ.pop(key, None)
    ledger.start()
    assert ledger.flush(30)
    ledger.close()
    store = SqliteStore(tmp_path / "ledger.sqlite3")
    ids = [r[0] for r in store.query("SELECT trace_id FROM usage", [])]
    store.close()
    assert set(completed) <= set(ids), f"{len(set(completed) - set(ids))} completed requests missing"
    assert len(ids) == len(set(ids))


def test_sigkill_of_every_worker_loses_no_row_and_the_next_start_ships_each_once(upstream_peer, tmp_path):
    """``serve --workers 2``: each worker appends to its own spool segment; SIGKILL of the whole process
    group leaves both segments unshipped, and one later process claims and ships them, each row once."""
    from tests.serving_hooks.test_workers import chat, gateway

    store_path = tmp_path / "ledger.sqlite3"
    env = {"OBSERVATORY_SERVE_LEDGER_ENABLED": "true", "OBSERVATORY_SERVE_LEDGER_URL": str(store_path),
           "OBSERVATORY_SERVE_LEDGER_SHIP_INTERVAL_S": "60"}  # the first pass at start, then none before the kill
    with gateway(tmp_path, upstream_peer.url, env=env) as gw:
        answered = [tid for status, tid in (chat(gw.url) for _ in range(60)) if status == 200]
        seen = gw.by_worker("observatory_gateway_requests")
        os.killpg(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait(10)
    assert len(answered) == 60 and set(seen) == {"0", "1"}, seen  # both workers answered some
    spool = gw.state / "ledger-spool"
    writers = {p.name.split("-")[0] for p in spool.glob("*.rows")}
    assert len(writers) == 2, sorted(p.name for p in spool.iterdir())  # a segment per worker, left unshipped

    ledger = open_ledger(load(ledger_enabled=True, ledger_url=str(store_path), ledger_spool_dir=spool))
    ledger.start()
    assert ledger.flush(30)
    ledger.close()
    store = SqliteStore(store_path)
    ids = [r[0] for r in store.query("SELECT trace_id FROM usage", [])]
    store.close()
    assert sorted(ids) == sorted(answered)  # every answered request once, nothing else
    assert not list(spool.glob("*.rows"))  # claimed, shipped and removed
