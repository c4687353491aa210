"""Merging the workers' expositions (serving_hooks._worker_metrics.merge): every sample of every
worker comes out once, unchanged but for a ``worker`` label, under one family per name."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpt_observatory.serving_hooks._worker_metrics import merge
from gpt_observatory.telemetry import names

TENANTS = st.sampled_from(["acme", "globex", "initech", 'with "quotes"', "back\\slash"])
WORKER = st.fixed_dictionaries({
    "requests": st.dictionaries(TENANTS, st.integers(0, 10**6), max_size=4),
    "active": st.integers(0, 500),
    "latencies": st.lists(st.floats(0, 100, allow_nan=False), max_size=5),
})


def exposition(worker: dict) -> bytes:
    registry = CollectorRegistry()
    requests = Counter("gateway_requests", "Requests.", ["tenant"], registry=registry)
    for tenant, n in worker["requests"].items():
        requests.labels(tenant).inc(n)
    Gauge("active_requests", "In flight.", registry=registry).set(worker["active"])
    latency = Histogram("latency_seconds", "Latency.", registry=registry, buckets=(0.1, 1, 10))
    for value in worker["latencies"]:
        latency.observe(value)
    return generate_latest(registry)


def samples(text: bytes) -> list[tuple[str, str, tuple, float]]:
    return sorted((f.name, s.name, tuple(sorted(s.labels.items())), s.value)
                  for f in text_string_to_metric_families(text.decode()) for s in f.samples)


@given(st.lists(WORKER, min_size=1, max_size=4))
def test_every_workers_samples_come_out_once_with_its_worker_label(workers):
    texts = {str(i): exposition(w) for i, w in enumerate(workers)}
    merged = merge(texts)

    expected = sorted((family, name, tuple(sorted({**dict(labels), names.WORKER: worker}.items())), value)
                      for worker, text in texts.items() for family, name, labels, value in samples(text))
    assert samples(merged) == expected
    families = [f.name for f in text_string_to_metric_families(merged.decode())]
    assert len(families) == len(set(families))  # one family per name, whatever the number of workers
