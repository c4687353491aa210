"""The PromQL lexer finds the series and labels an expression reads, and nothing else."""

from __future__ import annotations

import pytest

from gpt_observatory.dashboards.promql import boolify, instant, references
from gpt_observatory.telemetry.names import prometheus_label as label


def test_metric_names_are_told_from_functions_keywords_labels_and_durations():
    expr = (
        'histogram_quantile(0.95, sum by (le, job) (rate(http_server_request_duration_seconds_bucket'
        '{job=~"$job", http_route=~"/v1/.+"}[$__rate_interval]))) / on (job) group_left() '
        'sum without (instance) (up offset 5m) and bool time() - max_over_time(x:recorded[1h:1m])'
    )
    refs = references(expr)
    assert refs.metrics == {"http_server_request_duration_seconds_bucket", "up", "x:recorded"}
    assert refs.labels == {"le", "job", "http_route", "instance"}


def test_strings_and_label_values_are_not_metrics():
    refs = references('label_replace(foo_total{a="sum(bar)"}, "dst", "$1", "src", "(.*)")')
    assert refs.metrics == {"foo_total"}
    assert refs.labels == {"a"}


def test_aggregation_with_trailing_grouping():
    refs = references("sum(rate(a_total[5m])) by (tenant) > bool 0")
    assert refs.metrics == {"a_total"}
    assert refs.labels == {"tenant"}


def test_boolify_makes_every_comparison_outside_matchers_a_bool_one():
    assert boolify('a{x!="1"} > 0.5 and b >= bool 2 or c == 1') == 'a{x!="1"} > bool 0.5 and b >= bool 2 or c == bool 1'


def test_instant_substitutes_grafana_variables():
    assert instant('rate(x{job=~"$job", g=~"${gpu}"}[$__rate_interval])') == 'rate(x{job=~".*", g=~".*"}[2m])'
    assert instant('increase(x[$__range])', {"__range": "1h"}) == "increase(x[1h])"


def test_attribute_keys_become_labels():
    assert label("observatory.tenant") == "observatory_tenant"
    assert label("http.request.header.x-api-key") == "http_request_header_x_api_key"


def test_a_character_promql_does_not_allow_is_an_error():
    with pytest.raises(ValueError, match="unexpected"):
        references("rate(x[5m]) ; drop")
