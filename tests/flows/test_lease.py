"""The registry-side lease: one holder at a time, released at the end."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from gpt_observatory.flows.stores import client_for
from tests.flows.conftest import ModelFactory


def test_registry_lease_admits_one_holder_at_a_time(pg_models: ModelFactory) -> None:
    """The registry-side guard alone (no Prefect), for writers that bypass the concurrency limit.

    Four writers start at one barrier on a model without the tag: their first writes race on the
    store's unique key (one insert wins, the others fail), and the losers must wait, not crash.
    Each takes the lease as a promotion does (``acquire``, which the acquire-lease task runs) and
    holds it as a promotion does (``held``).
    """
    from gpt_observatory.flows import lease

    model, _ = pg_models.new_model("weak", prefix="lease")
    client = client_for(pg_models.uri)
    held: list[tuple[str, float, float]] = []
    holders = ["a", "b", "c", "d"]
    start = threading.Barrier(len(holders))

    def hold(name: str) -> None:
        start.wait()
        token = lease.acquire(client, model, name, ttl_s=60, settle_s=0.3, timeout_s=90)
        with lease.held(client, model, token):
            began = time.monotonic()
            time.sleep(0.3)
            held.append((name, began, time.monotonic()))

    with ThreadPoolExecutor(len(holders)) as pool:
        for f in [pool.submit(hold, name) for name in holders]:
            f.result(timeout=180)
    spans = sorted(held, key=lambda h: h[1])
    assert sorted(name for name, _, _ in spans) == holders
    overlaps = [(a[0], b[0]) for a, b in itertools.pairwise(spans) if b[1] < a[2]]
    assert not overlaps, f"holders overlapped: {overlaps}"
    assert lease.LEASE_TAG not in client.get_registered_model(model).tags
