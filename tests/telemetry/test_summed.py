"""Counters summed in process report what a synchronous counter would, through the real SDK."""

from __future__ import annotations

import uuid

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gpt_observatory import telemetry
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.names import Metric
from gpt_observatory.telemetry.summed import SummedCounter


def _metric(kind: str = "counter") -> Metric:
    return Metric(f"test.summed.{uuid.uuid4().hex[:8]}", "{request}", kind, "a test counter")


def _points(reader: InMemoryMetricReader, name: str) -> dict[frozenset, float]:
    data = reader.get_metrics_data()
    found: dict[frozenset, float] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    for p in m.data.data_points:
                        found[frozenset(p.attributes.items())] = p.value
    return found


def test_sums_per_attribute_set_match_what_was_added_in_any_key_order():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metric = _metric()
    counter = SummedCounter.of("tests", metric, provider=provider)
    counter.add(1, {"tenant": "acme", "code": 200})
    counter.add(2, {"code": 200, "tenant": "acme"})  # same set, other order
    counter.add(5, {"tenant": "globex", "code": 429})
    assert _points(reader, metric.name) == {
        frozenset({("tenant", "acme"), ("code", 200)}): 3,
        frozenset({("tenant", "globex"), ("code", 429)}): 5,
    }
    counter.add(1, {"tenant": "globex", "code": 429})
    assert _points(reader, metric.name)[frozenset({("tenant", "globex"), ("code", 429)})] == 6  # cumulative
    provider.shutdown()


def test_two_users_of_one_name_share_the_sum_and_a_new_provider_starts_afresh():
    metric = _metric()
    first_reader = InMemoryMetricReader()
    first = MeterProvider(metric_readers=[first_reader])
    a = SummedCounter.of("tests", metric, provider=first)
    b = SummedCounter.of("tests", metric, provider=first)  # a second gateway in the same process
    a.add(1, {"k": "v"})
    b.add(1, {"k": "v"})
    assert _points(first_reader, metric.name) == {frozenset({("k", "v")}): 2}

    second_reader = InMemoryMetricReader()
    second = MeterProvider(metric_readers=[second_reader])
    SummedCounter.of("tests", metric, provider=second).add(4, {"k": "v"})
    assert _points(second_reader, metric.name) == {frozenset({("k", "v")}): 4}
    assert _points(first_reader, metric.name) == {frozenset({("k", "v")}): 2}
    first.shutdown()
    second.shutdown()


def test_a_counter_made_before_configure_reports_through_the_configured_provider():
    telemetry.shutdown()  # no SDK provider is global: the component is built first
    metric = _metric()
    early = SummedCounter.of("tests", metric)
    early.add(3, {"k": "v"})
    handle = telemetry.configure("summed", metrics_exporter=["memory"], traces_exporter=["none"],
                                 logs_exporter=["none"], gpu_enabled=False)
    early.add(1, {"k": "v"})
    SummedCounter.of("tests", metric).add(10, {"k": "v"})  # a component built after configure
    points = handle.memory.metrics()[metric.name]
    assert [(dict(p.attributes), p.value) for p in points] == [({"k": "v"}, 14)]


def test_an_up_down_counter_goes_down_and_series_beyond_the_cap_overflow():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metric = _metric("updowncounter")
    active = SummedCounter.of("tests", metric, up_down=True, provider=provider)
    active.add(1, {"m": "POST"})
    active.add(1, {"m": "POST"})
    active.add(-1, {"m": "POST"})
    assert _points(reader, metric.name) == {frozenset({("m", "POST")}): 1}

    metric = _metric()
    capped = SummedCounter.of("tests", metric, provider=provider, max_series=2)
    for tenant in ("a", "b", "c", "d"):
        capped.add(1, {"tenant": tenant})
    assert _points(reader, metric.name) == {
        frozenset({("tenant", "a")}): 1, frozenset({("tenant", "b")}): 1,
        frozenset({("otel.metric.overflow", True)}): 2,
    }
    provider.shutdown()


def test_a_counter_made_before_configure_follows_a_reconfiguration_which_counts_afresh():
    metric = _metric()
    early = SummedCounter.of("tests", metric)
    first = telemetry.configure("summed-a", metrics_exporter=["memory"], traces_exporter=["none"],
                                logs_exporter=["none"], gpu_enabled=False)
    early.add(2, {"k": "v"})
    assert [p.value for p in first.memory.metrics()[metric.name]] == [2]
    second = telemetry.configure("summed-b", metrics_exporter=["memory"], traces_exporter=["none"],
                                 logs_exporter=["none"], gpu_enabled=False)
    early.add(5, {"k": "v"})
    assert [p.value for p in second.memory.metrics()[metric.name]] == [5]  # its observable, registered again


def test_a_provider_of_the_callers_own_reports_only_its_own_counters():
    metric = _metric()
    SummedCounter.of("tests", metric).add(7, {"outcome": "ok"})  # the global provider's (no pipeline now)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    SummedCounter.of("tests", metric, provider=provider).add(1, {"outcome": "bad_signature"})
    assert _points(reader, metric.name) == {frozenset({("outcome", "bad_signature")}): 1}
    provider.shutdown()


def _by_tenant(points) -> dict[str, float]:
    return {p.attributes.get(names.TENANT, "overflow" if p.attributes.get("otel.metric.overflow") else "?"): p.value
            for p in points}


def test_5000_tenants_are_5000_series_by_default_and_a_lower_limit_counts_what_it_folds():
    tenants = [f"tenant-{i:04d}" for i in range(5000)]
    summed_metric, sdk_metric = _metric(), _metric()
    counted = {}
    for limit in (None, 1000):
        handle = telemetry.configure("tenants", metrics_exporter=["memory"], traces_exporter=["none"],
                                     logs_exporter=["none"], gpu_enabled=False,
                                     **({"metric_series_limit": limit} if limit else {}))
        summed = SummedCounter.of("tests.tenants", summed_metric)  # how the gateway counts per tenant
        sdk = metrics.get_meter("tests.tenants").create_counter(sdk_metric.name)  # an SDK instrument
        for tenant in tenants:
            summed.add(1, {names.TENANT: tenant})
            sdk.add(1, {names.TENANT: tenant})
        points = handle.memory.metrics()
        counted[limit] = (_by_tenant(points[summed_metric.name]), _by_tenant(points[sdk_metric.name]),
                          {p.attributes[names.TELEMETRY_METRIC]: p.value
                           for p in points.get(names.TELEMETRY_SERIES_OVERFLOW.name, [])})

    summed_series, sdk_series, overflow = counted[None]
    assert summed_series == sdk_series == dict.fromkeys(tenants, 1)  # every tenant its own series
    assert overflow == {}
    summed_series, sdk_series, overflow = counted[1000]
    assert len(summed_series) == len(sdk_series) == 1001  # 1,000 tenants and the overflow series
    assert summed_series["overflow"] == sdk_series["overflow"] == 4000
    assert overflow == {summed_metric.name: 4000}  # the folding is counted, by metric
