"""Totals from the ledger store, for ``observatory usage`` and ``GET /admin/usage``.

Billable rows only (mirrored shadow calls are not), grouped by tenant, model (and version) or day,
and always by currency: amounts in different currencies are never added. Costs are integer
micro-units; ``cost`` is their decimal text (``Decimal``, never a float sum).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gpt_observatory.serving_hooks.ledger._ship import Store

BY = ("tenant", "model", "day")
_KEYS = {
    "tenant": {"sqlite": "tenant", "postgresql": "tenant"},
    "model": {"sqlite": "COALESCE(model, '') || '@' || COALESCE(model_version, '')",
              "postgresql": "COALESCE(model, '') || '@' || COALESCE(model_version, '')"},
    "day": {"sqlite": "substr(time, 1, 10)", "postgresql": "to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD')"},
}
_MICRO = Decimal("0.000001")
FIELDS = ("key", "currency", "requests", "input_tokens", "output_tokens", "cached_tokens", "cost_micro",
          "cost", "gpu_seconds", "gpu_joules")


@dataclass(frozen=True, slots=True)
class Filters:
    tenant: str | None = None
    model: str | None = None
    since: str | None = None  # ISO 8601 UTC, inclusive
    until: str | None = None  # ISO 8601 UTC, exclusive


def totals(store: Store, by: str = "tenant", filters: Filters = Filters()) -> list[dict[str, Any]]:
    """One dict (:data:`FIELDS`) per group, ordered by key then currency."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)} (got {by!r})")
    p = store.placeholder
    key = _KEYS[by][store.dialect]
    where, params = ["billable"], []
    for column, op, value in (("tenant", "=", filters.tenant), ("model", "=", filters.model),
                              ("time", ">=", filters.since), ("time", "<", filters.until)):
        if value is not None:
            where.append(f"{column} {op} {p}")
            params.append(value)
    sql = (f"SELECT {key} AS k, COALESCE(currency, '') AS c, COUNT(*), SUM(input_tokens), SUM(output_tokens), "
           "SUM(cached_tokens), SUM(cost_micro), SUM(gpu_seconds), SUM(gpu_joules) "
           f"FROM usage WHERE {' AND '.join(where)} GROUP BY k, c ORDER BY k, c")
    out = []
    for k, currency, n, inp, outp, cached, cost, gpu_s, joules in store.query(sql, params):
        micro = int(cost) if cost is not None else None
        out.append({
            "key": k, "currency": currency or None, "requests": int(n), "input_tokens": int(inp or 0),
            "output_tokens": int(outp or 0), "cached_tokens": int(cached) if cached is not None else None,
            "cost_micro": micro, "cost": str(Decimal(micro).scaleb(-6).quantize(_MICRO)) if micro is not None else None,
            "gpu_seconds": float(gpu_s) if gpu_s is not None else None,
            "gpu_joules": float(joules) if joules is not None else None,
        })
    return out


def when(text: str | None, now_s: float | None = None) -> str | None:
    """``10m``, ``2h``, ``1d`` before now, or an ISO 8601 time (UTC when it names no zone), as the
    ledger's time text; ValueError naming what is accepted."""
    if text is None:
        return None
    import time

    from gpt_observatory.serving_hooks.ledger._row import iso
    from gpt_observatory.telemetry.reading.when import parse_when

    now_ns = time.time_ns() if now_s is None else int(now_s * 1e9)
    return iso(parse_when(text, now_ns) / 1e9)
