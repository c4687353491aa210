"""PromQL building blocks shared by the dashboards and the alert rules."""

from __future__ import annotations

from typing import Final

from gpt_observatory.dashboards import series as s
from gpt_observatory.telemetry.names import Metric

RATE: Final = "$__rate_interval"
RANGE: Final = "$__range"


def sel(series: str, *matchers: str) -> str:
    """``series{m1, m2}`` (or the bare name without matchers)."""
    return f"{series}{{{', '.join(matchers)}}}" if matchers else series


def agg(fn: str, inner: str, by: tuple[str, ...] = ()) -> str:
    """``fn by (labels) (inner)``."""
    grouping = f" by ({', '.join(by)})" if by else ""
    return f"{fn}{grouping} ({inner})"


def rate(series: str, *matchers: str, by: tuple[str, ...] = (), window: str = RATE, fn: str = "rate") -> str:
    """``sum by (...) (fn(series{...}[window]))``."""
    return agg("sum", f"{fn}({sel(series, *matchers)}[{window}])", by)


def quantile(q: float, metric: Metric, *matchers: str, by: tuple[str, ...] = (), window: str = RATE) -> str:
    """The ``q`` quantile of a histogram over ``window``, per ``by``."""
    return f"histogram_quantile({q}, {rate(s.bucket(metric), *matchers, by=(*by, s.LE), window=window)})"


def ratio(series: str, bad: str, *matchers: str, by: tuple[str, ...] = (), window: str = RATE) -> str:
    """Share of ``series``'s rate whose samples also match ``bad``: 0, not empty, while none do
    (so a healthy system shows a flat zero and an alert on it has a series to evaluate)."""
    part = rate(series, *matchers, bad, by=by, window=window)
    whole = rate(series, *matchers, by=by, window=window)
    return f"({part} or {whole} * 0) / {whole}"


def failed(series: str, *matchers: str, status: str = "5..", by: tuple[str, ...] = (), window: str = RATE,
           fn: str = "rate") -> str:
    """The rate of requests that failed: answered with a ``status`` (regex) or failed after their
    status went out (``error_type`` set on a 200: a cut stream). The two selectors are disjoint
    (with and without ``error_type``), so ``or`` adds them without counting a request twice."""
    with_error = f"{fn}({sel(series, *matchers, s.HAS_ERROR)}[{window}])"
    answered = f'{s.STATUS_CODE}=~"{status}"'
    by_status = f"{fn}({sel(series, *matchers, answered, s.NO_ERROR)}[{window}])"
    return agg("sum", f"{with_error} or {by_status}", by)


def failed_ratio(series: str, *matchers: str, status: str = "5..", by: tuple[str, ...] = (),
                 window: str = RATE) -> str:
    """Share of ``series``'s rate that :func:`failed`; 0, not empty, while none did."""
    whole = rate(series, *matchers, by=by, window=window)
    return f"({failed(series, *matchers, status=status, by=by, window=window)} or {whole} * 0) / {whole}"


def below(metric: Metric, boundary: str, *matchers: str, by: tuple[str, ...] = (), window: str = RATE) -> str:
    """Share of a histogram's observations above bucket ``boundary`` (an ``le`` value)."""
    good = rate(s.bucket(metric), *matchers, f'{s.LE}="{boundary}"', by=by, window=window)
    return f"1 - ({good} / {rate(s.count(metric), *matchers, by=by, window=window)})"
