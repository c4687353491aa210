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
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass

from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.names import prometheus_label, prometheus_series

_VERSION = prometheus_label(names.MODEL_VERSION)
_ROLE = prometheus_label(names.MODEL_ROLE)
_MODEL = prometheus_label(names.GEN_AI_REQUEST_MODEL)
_ERROR = prometheus_label(names.ERROR_TYPE)


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

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests > 0 else 0.0

    def as_dict(self, prefix: str) -> dict[str, float | None]:
        """Flat figures for a decision record, e.g. ``challenger_p95_s``."""
        d = asdict(self)
        return {
            f"{prefix}_requests": round(d["requests"], 1),
            f"{prefix}_errors": round(d["errors"], 1),
            f"{prefix}_error_rate": round(self.error_rate, 6),
            f"{prefix}_p95_s": _round(d["p95_duration_s"]),
            f"{prefix}_p95_ttft_s": _round(d["p95_ttft_s"]),
            f"{prefix}_tokens_per_s": _round(d["tokens_per_s"]),
        }


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

    def __init__(self, prometheus: Prometheus, model: str, selector: str = "") -> None:
        self.prometheus = prometheus
        matchers = [f'{_MODEL}="{_escape(model)}"'] + ([selector.strip().strip(",")] if selector.strip() else [])
        self._matchers = ", ".join(matchers)

    def figures(self, window_s: float, sides: list[Side]) -> dict[Side, LiveFigures]:
        """Each side's figures over the last ``window_s`` seconds (summed over every gateway)."""
        window = f"{max(1, math.ceil(window_s))}s"
        by = f"{_VERSION}, {_ROLE}"
        count = prometheus_series(names.GEN_AI_SERVER_REQUEST_DURATION)[2]
        total = prometheus_series(names.GEN_AI_SERVER_REQUEST_DURATION)[1]
        bucket = prometheus_series(names.GEN_AI_SERVER_REQUEST_DURATION)[0]
        ttft = prometheus_series(names.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN)[0]
        tokens = prometheus_series(names.GEN_AI_OUTPUT_TOKENS)[0]
        m = self._matchers

        def increase(series: str, extra: str = "", grouping: str = by) -> str:
            return f"sum by ({grouping}) (increase({series}{{{m}{extra}}}[{window}]))"

        results = {
            "requests": self._by_side(increase(count)),
            "errors": self._by_side(increase(count, f', {_ERROR}!=""')),
            "p95_duration_s": self._by_side(f"histogram_quantile(0.95, {increase(bucket, grouping=by + ', le')})"),
            "p95_ttft_s": self._by_side(f"histogram_quantile(0.95, {increase(ttft, grouping=by + ', le')})"),
            "tokens_per_s": self._by_side(f"{increase(tokens)} / {increase(total)}"),
        }
        out = {}
        for side in sides:
            values = {k: v.get(side) for k, v in results.items()}
            out[side] = LiveFigures(
                requests=values["requests"] or 0.0,
                errors=values["errors"] or 0.0,
                p95_duration_s=values["p95_duration_s"],
                p95_ttft_s=values["p95_ttft_s"],
                tokens_per_s=values["tokens_per_s"],
            )
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
