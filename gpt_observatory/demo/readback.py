"""Reading back what the demo's processes really emitted: spans from the ``jsonl`` traces file,
metrics scraped from the gateway's ``/metrics``.

Metric and attribute names come from :mod:`telemetry.names`; the Prometheus forms are derived
from them the way the OpenTelemetry Prometheus exporter derives them.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.semconv.attributes.service_attributes import SERVICE_INSTANCE_ID

from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.names import prometheus_label as label


# --------------------------------------------------------------------------- spans (jsonl)
def read_spans(traces: Path, since_ns: int = 0) -> list[dict[str, Any]]:
    """Spans in ``traces`` and its rotated backups that started at or after ``since_ns``."""
    files = [*sorted(traces.parent.glob(traces.name + ".*"), key=lambda p: p.name, reverse=True), traces]
    out = []
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                span = json.loads(line)
            except ValueError:  # a line being written right now
                continue
            if span.get("start_time_unix_nano", 0) >= since_ns:
                out.append(span)
    return out


def instance_of(span: dict[str, Any]) -> str | None:
    return (span.get("resource") or {}).get(SERVICE_INSTANCE_ID)


def wait_for_spans(
    traces: Path, since_ns: int, enough: Callable[[list[dict[str, Any]]], bool], timeout: float = 15.0
) -> list[dict[str, Any]]:
    """Re-read ``traces`` until ``enough(spans)`` (the batch exporter writes about once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = read_spans(traces, since_ns)
        if enough(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.25)


def is_api_server_span(span: dict[str, Any]) -> bool:
    return span.get("kind") == "SERVER" and str(span["attributes"].get(names.URL_PATH, "")).startswith("/v1/")


def duration_ms(span: dict[str, Any]) -> float:
    return (span["end_time_unix_nano"] - span["start_time_unix_nano"]) / 1e6


def span_key(span: dict[str, Any]) -> str:
    """The span's name, with Prefect's per-run names (``fit-a8f``, ``bright-eel``) grouped by kind."""
    kind = span["attributes"].get("prefect.run.type")
    if kind == "task":
        return "prefect task run: " + re.sub(r"-[0-9a-f]{3}$", "", span["name"])
    if kind == "flow":
        return "prefect flow run"
    return str(span["name"])


def shared_trace(spans: Iterable[dict[str, Any]], model: str) -> dict[str, Any] | None:
    """One trace in which the gateway's SERVER span, ``auth.verify`` and the inference span of
    ``model`` share the trace id (a streamed one when there is one)."""
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_trace.setdefault(span["trace_id"], []).append(span)
    found = []
    for trace_id, group in by_trace.items():
        server = [s for s in group if s["kind"] == "SERVER"]
        auth = [s for s in group if s["name"] == names.SPAN_AUTH_VERIFY]
        inference = [s for s in group if names.GEN_AI_OPERATION_NAME in s["attributes"]
                     and s["attributes"].get(names.GEN_AI_REQUEST_MODEL) == model]
        if server and auth and inference:
            streamed = bool(inference[0]["attributes"].get(names.GEN_AI_REQUEST_STREAM))
            found.append((streamed, trace_id, server[0], auth[0], inference[0]))
    if not found:
        return None
    found.sort(key=lambda f: f[0], reverse=True)
    _, trace_id, *chain = found[0]
    return {
        "trace_id": trace_id,
        "spans": [
            {"name": s["name"], "kind": s["kind"], "span_id": s["span_id"], "parent_span_id": s["parent_span_id"],
             "service": (s.get("resource") or {}).get(names.SERVICE_NAME)}
            for s in chain
        ],
    }


# --------------------------------------------------------------------------- metrics (/metrics)
@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_exposition(text: str) -> list[Sample]:
    from prometheus_client.parser import text_string_to_metric_families

    return [Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


class Scrape:
    """One scrape of the gateway's ``/metrics``, queried by :class:`telemetry.names.Metric`."""

    def __init__(self, text: str) -> None:
        self.samples = parse_exposition(text)

    def _series(self, metric: names.Metric, suffix: str = "") -> Iterator[Sample]:
        wanted = metric.prometheus + suffix
        return (s for s in self.samples if s.name == wanted)

    def total(self, metric: names.Metric, **match: str) -> float:
        suffix = "_total" if metric.kind == "counter" else ""
        return sum(s.value for s in self._series(metric, suffix)
                   if all(s.labels.get(label(k)) == v for k, v in match.items()))

    def by(self, metric: names.Metric, *attributes: str) -> dict[str, float]:
        """Counter (or gauge) values summed by the given attributes, joined with ``/``."""
        suffix = "_total" if metric.kind == "counter" else ""
        out: dict[str, float] = {}
        for s in self._series(metric, suffix):
            key = "/".join(s.labels.get(label(a), "") for a in attributes)
            out[key] = out.get(key, 0.0) + s.value
        return out

    def histogram(self, metric: names.Metric) -> tuple[float, float, list[tuple[float, float]]]:
        """(count, sum, cumulative buckets) over every label set."""
        count = sum(s.value for s in self._series(metric, "_count"))
        total = sum(s.value for s in self._series(metric, "_sum"))
        buckets: dict[float, float] = {}
        for s in self._series(metric, "_bucket"):
            le = float(s.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + s.value
        return count, total, sorted(buckets.items())

    def resource(self, attribute: str) -> str | None:
        for s in self.samples:
            if s.name == "target_info":
                return s.labels.get(label(attribute))
        return None


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """PromQL's ``histogram_quantile`` over cumulative ``(le, count)`` buckets."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_le
            width = count - lower_count
            return lower_le + (le - lower_le) * ((rank - lower_count) / width if width else 1.0)
        lower_le, lower_count = le, count
    return lower_le


def rank_quantile(q: float, values: list[float]) -> float | None:
    """Nearest-rank quantile of exact values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
