"""A real Prometheus scrapes the ``prometheus`` backend; a real Pushgateway receives pushes."""

from __future__ import annotations

import urllib.request

from opentelemetry import metrics

from gpt_observatory import telemetry
from gpt_observatory.telemetry import names
from tests import components
from tests.components import query_prometheus, wait_for


def test_prometheus_scrapes_the_pull_endpoint(tmp_path):
    handle = telemetry.configure(
        "prom-svc", metrics_exporter=["prometheus"], prometheus_port=0, traces_exporter=["none"],
        logs_exporter=["none"],
    )
    port = handle.readers[0].port
    meter = metrics.get_meter("t")
    meter.create_counter(names.GATEWAY_REQUESTS.name, unit=names.GATEWAY_REQUESTS.unit).add(
        7, {names.TENANT: "acme"}
    )
    hist = meter.create_histogram(names.HTTP_SERVER_REQUEST_DURATION.name, unit="s")
    hist.record(0.2, {names.HTTP_ROUTE: "/v1/chat/completions"})
    with components.prometheus(tmp_path / "prom", [f"127.0.0.1:{port}"]) as prom:
        series = names.prometheus_series(names.GATEWAY_REQUESTS)[0]
        result = wait_for(
            lambda: query_prometheus(prom.url, f'{series}{{observatory_tenant="acme"}}'), what="scraped counter"
        )
        assert float(result[0]["value"][1]) == 7
        count = names.prometheus_series(names.HTTP_SERVER_REQUEST_DURATION)[2]
        assert float(wait_for(lambda: query_prometheus(prom.url, count), what="histogram")[0]["value"][1]) == 1
        up = query_prometheus(prom.url, 'up{job="observatory"}')
        assert up[0]["value"][1] == "1"


def test_pushgateway_receives_pushed_metrics(pushgateway):
    handle = telemetry.configure(
        "batch-job", metrics_exporter=["pushgateway"], pushgateway_url=pushgateway.url,
        traces_exporter=["none"], logs_exporter=["none"],
    )
    metrics.get_meter("t").create_gauge(names.EVAL_LOSS.name, unit=names.EVAL_LOSS.unit).set(1.25, {"version": "3"})
    handle.shutdown()  # pushes the final values
    body = urllib.request.urlopen(f"{pushgateway.url}/metrics", timeout=5).read().decode()
    line = next(ln for ln in body.splitlines() if ln.startswith(names.prometheus_name(names.EVAL_LOSS) + "{"))
    assert 'job="batch-job"' in line and 'version="3"' in line and line.endswith(" 1.25")
    assert handle.stats.exported[("metrics", "pushgateway", "success")] >= 1


def test_pushgateway_outage_is_counted_not_raised():
    handle = telemetry.configure(
        "batch-job", metrics_exporter=["pushgateway"], pushgateway_url=f"http://127.0.0.1:{components.free_port()}",
        traces_exporter=["none"], logs_exporter=["none"], otlp_timeout_ms=500,
    )
    handle.force_flush()  # does not raise
    assert handle.stats.failures("metrics") >= 1
