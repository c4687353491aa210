"""Alias writes are last-writer-wins: concurrent promotions must be serialized."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from gpt_observatory.flows.stores import client_for
from tests.flows.conftest import ModelFactory, in_thread


def test_two_concurrent_promotions_end_with_one_champion_and_both_decisions(pg_models: ModelFactory) -> None:
    from gpt_observatory.flows import history
    from gpt_observatory.flows.flows import promote
    from gpt_observatory.flows.lease import LEASE_TAG
    from gpt_observatory.flows.registry import Registry

    model, (weak, mid, strong) = pg_models.new_model("weak", "mid", "strong", prefix="race")
    overrides = pg_models.overrides()
    promote(model_name=model, version=weak, overrides=overrides)

    with ThreadPoolExecutor(2) as pool:
        futures = [in_thread(pool, promote, model_name=model, version=v, overrides=overrides) for v in (mid, strong)]
        results = [f.result(timeout=600) for f in futures]

    client = client_for(pg_models.uri)
    decisions = history.read(client, model)[1:]
    assert sorted(d.version for d in decisions) == [mid, strong]
    assert {d.seq for d in decisions} == {r.seq for r in results}
    first, second = decisions
    # Serialized: the second was judged against the champion the first left behind.
    assert first.from_version == weak
    assert second.from_version == first.champion
    assert Registry(client, model).alias("champion") == second.champion
    assert LEASE_TAG not in client.get_registered_model(model).tags


def test_registry_lease_admits_one_holder_at_a_time(pg_models: ModelFactory) -> None:
    """The registry-side guard alone (no Prefect), for writers that bypass the concurrency limit.

    Four writers start at one barrier on a model without the tag: their first writes race on the
    store's unique key (one insert wins, the others fail), and the losers must wait, not crash.
    """
    from gpt_observatory.flows import lease

    model, _ = pg_models.new_model("weak", prefix="lease")
    client = client_for(pg_models.uri)
    held: list[tuple[str, float, float]] = []
    holders = ["a", "b", "c", "d"]
    start = threading.Barrier(len(holders))

    def hold(name: str) -> None:
        start.wait()
        with lease.registry_lease(client, model, name, ttl_s=60, settle_s=0.3, timeout_s=90):
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
