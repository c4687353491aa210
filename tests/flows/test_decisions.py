"""Alias writes are last-writer-wins: concurrent promotions must be serialized."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from gpt_observatory.flows.stores import client_for
from tests.flows.conftest import ModelFactory, in_thread


def test_two_concurrent_promotions_end_with_one_champion_and_both_decisions(pg_models: ModelFactory) -> None:
    from gpt_observatory.flows import history
    from gpt_observatory.flows.lease import LEASE_TAG
    from gpt_observatory.flows.promotion import promote
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
