"""Decision records: kept on model versions, readable by any MLflow client, in order."""

from __future__ import annotations

from gpt_observatory.flows.history import Decision, champion_line, decisions_of, previous_champion, read, record
from gpt_observatory.flows.stores import client_for


def decision(kind: str, version: str, before: str | None) -> Decision:
    champion = before if kind == "rejected" else version
    return Decision.new(decision=kind, model="m", version=version, from_version=before, champion=champion,
                        reason=kind)


def test_champion_line_follows_promotions_and_rollbacks() -> None:
    past = [decision("promoted", "1", None), decision("promoted", "2", "1"), decision("rejected", "3", "2"),
            decision("promoted", "4", "2")]
    assert champion_line(past) == ["1", "2", "4"]
    assert previous_champion(past, "4") == "2"
    past.append(decision("rolled_back", "2", "4"))
    assert champion_line(past) == ["1", "2"]
    assert previous_champion(past, "2") == "1"


def test_decisions_round_trip_through_registry_tags(pg_models) -> None:
    model, (v1, v2) = pg_models.new_model("weak", "mid", prefix="hist")
    client = client_for(pg_models.uri)
    first = Decision.new(decision="promoted", model=model, version=v1, from_version=None, champion=v1,
                         reason="first", figures={"challenger_loss": 4.6})
    second = Decision.new(decision="rejected", model=model, version=v2, from_version=v1, champion=v1,
                          reason="worse")
    record(client, first)
    record(client, second)
    assert read(client, model) == [first, second]
    assert decisions_of([]) == []
