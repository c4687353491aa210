"""Live serving figures per model version and role, read from Prometheus's HTTP API.

The gateways label their GenAI metrics with the serving version and role
(``observatory.model.version``, ``observatory.model.role``); one query per figure, grouped by
both, gives the champion and the challenger side by side, summed over every gateway replica:

- requests and errors (``error.type`` set) from ``gen_ai.server.request.duration``'s count; the
  GenAI metric carries no HTTP status, so a generation that failed after its 200 went out (the
  model raised mid-stream, the server cancelled it) counts as an error like any other, and a
  client that left mid-stream does not;
- p95 request duration and p95 time to first token (streams only) from their histograms;
- output tokens per second of generation: output tokens over the summed request durations, a
  speed that does not depend on how much traffic a side gets.

With ``source="shadow"`` the same figures come from the ``observatory.shadow.*`` metrics of mirrored
requests (``serving_hooks.backends.shadow``), both sides measured on the same requests, no user
served by the challenger; the challenger side adds the exact-match rate and the mean length ratio
of its answers against the champion's.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.names import prometheus_label, prometheus_series

_VERSION = prometheus_label(names.MODEL_VERSION)
_ROLE = prometheus_label(names.MODEL_ROLE)
_MODEL = prometheus_label(names.GEN_AI_REQUEST_MODEL)
_ERROR = prometheus_label(names.ERROR_TYPE)
_MATCH = prometheus_label(names.SHADOW_MATCH)
Source = Literal["live", "shadow"]
# (duration histogram, TTFT histogram, output-token counter) each source reads.
_SERIES: dict[str, tuple[names.Metric, names.Metric, names.Metric]] = {
    "live": (names.GEN_AI_SERVER_REQUEST_DURATION, names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, names.GEN_AI_OUTPUT_TOKENS),
    "shadow": (names.SHADOW_REQUEST_DURATION, names.SHADOW_TIME_TO_FIRST_TOKEN, names.SHADOW_OUTPUT_TOKENS),
}


class PrometheusError(RuntimeError):
    """Prometheus did not answer a query (down, wrong URL, or a query it refused)."""


@dataclass(frozen=True, slots=True)
class LiveFigures:
    """One side's figures over a window; ``None`` where Prometheus had no data."""

    requests: float = 0.0
    errors: float = 0.0
    p95_duration_s: float | None = None
    p95_ttft_s: float | None = None
    tokens_per_s: float | None = None
    exact_match_rate: float | None = None  # shadow: answers identical to the champion's, of those compared
    length_ratio: float | None = None  # shadow: mean output length over the champion's on the same request

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests > 0 else 0.0

    def as_dict(self, prefix: str) -> dict[str, float | None]:
        """Flat figures for a decision record, e.g. ``challenger_p95_s``."""
        d = asdict(self)
        out = {
            f"{prefix}_requests": round(d["requests"], 1),
            f"{prefix}_errors": round(d["errors"], 1),
            f"{prefix}_error_rate": round(self.error_rate, 6),
            f"{prefix}_p95_s": _round(d["p95_duration_s"]),
            f"{prefix}_p95_ttft_s": _round(d["p95_ttft_s"]),
            f"{prefix}_tokens_per_s": _round(d["tokens_per_s"]),
        }
        for key in ("exact_match_rate", "length_ratio"):  # shadow figures only
            if d[key] is not None:
                out[f"{prefix}_{key}"] = _round(d[key])
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


@dataclass(frozen=True, slots=True)
class Side:
    """One served (version, role) pair."""

    version: str
    role: str


class Prometheus:
    """A small client for the instant-query endpoint (``/api/v1/query``)."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def query(self, expr: str) -> list[dict]:
        url = f"{self.base_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        except (OSError, ValueError) as e:
            raise PrometheusError(f"Prometheus at {self.base_url} did not answer ({e}); check "
                                  f"--prometheus-url / OBSERVATORY_CANARY_PROMETHEUS_URL") from e
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus refused {expr!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]


class LiveQueries:
    """The per-version queries for one served model, optionally narrowed by extra label matchers."""

    def __init__(self, prometheus: Prometheus, model: str, selector: str = "", source: Source = "live") -> None:
        self.prometheus = prometheus
        self.source = source
        matchers = [f'{_MODEL}="{_escape(model)}"'] + ([selector.strip().strip(",")] if selector.strip() else [])
        self._matchers = ", ".join(matchers)

    def figures(self, window_s: float, sides: list[Side]) -> dict[Side, LiveFigures]:
        """Each side's figures over the last ``window_s`` seconds (summed over every gateway)."""
        window = f"{max(1, math.ceil(window_s))}s"
        by = f"{_VERSION}, {_ROLE}"
        duration, first_token, output = _SERIES[self.source]
        bucket, total, count = prometheus_series(duration)[:3]
        ttft = prometheus_series(first_token)[0]
        tokens = prometheus_series(output)[0]
        m = self._matchers

        def increase(series: str, extra: str = "", grouping: str = by) -> str:
            return f"sum by ({grouping}) (increase({series}{{{m}{extra}}}[{window}]))"

        results: dict[str, dict[Side, float]] = {
            "requests": self._by_side(increase(count)),
            "errors": self._by_side(increase(count, f', {_ERROR}!=""')),
            "p95_duration_s": self._by_side(f"histogram_quantile(0.95, {increase(bucket, grouping=by + ', le')})"),
            "p95_ttft_s": self._by_side(f"histogram_quantile(0.95, {increase(ttft, grouping=by + ', le')})"),
            "tokens_per_s": self._by_side(f"{increase(tokens)} / {increase(total)}"),
        }
        if self.source == "shadow":
            results.update(self._divergence(increase))
        out = {}
        for side in sides:
            values = {k: v.get(side) for k, v in results.items()}
            out[side] = LiveFigures(
                requests=values["requests"] or 0.0,
                errors=values["errors"] or 0.0,
                p95_duration_s=values["p95_duration_s"],
                p95_ttft_s=values["p95_ttft_s"],
                tokens_per_s=values["tokens_per_s"],
                exact_match_rate=values.get("exact_match_rate"),
                length_ratio=values.get("length_ratio"),
            )
        return out

    def _divergence(self, increase: Callable[..., str]) -> dict[str, dict[Side, float]]:
        """The challenger's exact-match rate and mean length ratio against the champion, by version."""
        compared = prometheus_series(names.SHADOW_COMPARISONS)[0]
        ratio_sum, ratio_count = prometheus_series(names.SHADOW_LENGTH_RATIO)[1:3]
        matches: dict[str, dict[str, float]] = {}
        for sample in self.prometheus.query(increase(compared, grouping=f"{_VERSION}, {_MATCH}")):
            labels = sample["metric"]
            matches.setdefault(labels.get(_VERSION, ""), {})[labels.get(_MATCH, "")] = float(sample["value"][1])
        sums = self._by_version(increase(ratio_sum, grouping=_VERSION))
        counts = self._by_version(increase(ratio_count, grouping=_VERSION))
        challenger = names.MODEL_ROLE_CHALLENGER
        rate = {Side(v, challenger): by.get("exact", 0.0) / sum(by.values()) for v, by in matches.items()
                if sum(by.values()) > 0}
        ratio = {Side(v, challenger): sums.get(v, 0.0) / n for v, n in counts.items() if n > 0}
        return {"exact_match_rate": rate, "length_ratio": ratio}

    def _by_version(self, expr: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for sample in self.prometheus.query(expr):
            value = float(sample["value"][1])
            if math.isfinite(value):
                out[sample["metric"].get(_VERSION, "")] = value
        return out

    def _by_side(self, expr: str) -> dict[Side, float]:
        out: dict[Side, float] = {}
        for sample in self.prometheus.query(expr):
            labels = sample["metric"]
            value = float(sample["value"][1])
            if math.isfinite(value):
                out[Side(labels.get(_VERSION, ""), labels.get(_ROLE, ""))] = value
        return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
