"""Observatory's dashboards and monitoring configuration, built from code and checked against
the names module: Grafana dashboards (``grafana/``), Prometheus scrape config, alert and recording
rules with promtool unit tests (``prometheus/``), OpenTelemetry Collector config (``otelcol/``).

>>> from dashboards import build, check
>>> sorted(build())[:1]
['grafana/gateway.json']
>>> check(promtool=None)   # names, labels, staleness and collector consistency
[]
"""

from __future__ import annotations

from gpt_observatory.dashboards.artefacts import ROOT, build, export, stale
from gpt_observatory.dashboards.check import Finding
from gpt_observatory.dashboards.check import run as check

__all__ = ["ROOT", "Finding", "build", "check", "export", "stale"]
