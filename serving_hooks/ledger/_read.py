"""Totals from the ledger store, for ``observatory usage`` and ``GET /admin/usage``.

Grouped by tenant, model (and version) or day, and always by currency: amounts in different
currencies are never added. ``requests``, the tokens, ``cost`` and the GPU figures are the billable
rows' only. Rows nobody is charged for (``billable`` false: the challenger's shadow mirrors) are left
out unless asked for (``include_shadow``: ``observatory usage --include-shadow``, ``GET
/admin/usage?include_shadow=true``), and then counted apart, in :data:`UNBILLED` (a group of
mirrors alone, such as the challenger's version ``--by model``, shows 0 requests and no cost). Costs
are integer micro-units; ``cost`` is their decimal text (``Decimal``, never a float sum).
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
UNBILLED = ("unbilled_requests", "unbilled_input_tokens", "unbilled_output_tokens", "unbilled_gpu_seconds",
            "unbilled_gpu_joules")  # with include_shadow
_BILLED = ("input_tokens", "output_tokens", "cached_tokens", "cost_micro", "gpu_seconds", "gpu_joules")


@dataclass(frozen=True, slots=True)
class Filters:
    tenant: str | None = None
    model: str | None = None
    since: str | None = None  # ISO 8601 UTC, inclusive
    until: str | None = None  # ISO 8601 UTC, exclusive


def totals(store: Store, by: str = "tenant", filters: Filters = Filters(),
           include_shadow: bool = False) -> list[dict[str, Any]]:
    """One dict (:data:`FIELDS`, and :data:`UNBILLED` with ``include_shadow``) per group, ordered by key
    then currency."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)} (got {by!r})")
    p = store.placeholder
    key = _KEYS[by][store.dialect]
    where: list[str] = [] if include_shadow else ["billable"]
    params: list[object] = []
    for column, op, value in (("tenant", "=", filters.tenant), ("model", "=", filters.model),
                              ("time", ">=", filters.since), ("time", "<", filters.until)):
        if value is not None:
            where.append(f"{column} {op} {p}")
            params.append(value)
    billed = ", ".join(f"SUM(CASE WHEN billable THEN {c} END)" for c in _BILLED)
    sql = (f"SELECT {key} AS k, COALESCE(currency, '') AS c, SUM(CASE WHEN billable THEN 1 ELSE 0 END), {billed}, "
           "SUM(CASE WHEN billable THEN 0 ELSE 1 END), SUM(CASE WHEN billable THEN 0 ELSE input_tokens END), "
           "SUM(CASE WHEN billable THEN 0 ELSE output_tokens END), SUM(CASE WHEN billable THEN NULL ELSE gpu_seconds END), "
           "SUM(CASE WHEN billable THEN NULL ELSE gpu_joules END) "
           f"FROM usage {'WHERE ' + ' AND '.join(where) if where else ''} GROUP BY k, c ORDER BY k, c")
    out = []
    for k, currency, n, inp, outp, cached, cost, gpu_s, joules, *unbilled in store.query(sql, params):
        micro = int(cost) if cost is not None else None
        out.append({
            "key": k, "currency": currency or None, "requests": int(n), "input_tokens": int(inp or 0),
            "output_tokens": int(outp or 0), "cached_tokens": int(cached) if cached is not None else None,
            "cost_micro": micro, "cost": str(Decimal(micro).scaleb(-6).quantize(_MICRO)) if micro is not None else None,
            "gpu_seconds": _float(gpu_s), "gpu_joules": _float(joules),
        })
        if include_shadow:
            un, un_in, un_out, un_gpu_s, un_joules = unbilled
            out[-1].update(zip(UNBILLED, (int(un), int(un_in or 0), int(un_out or 0), _float(un_gpu_s),
                                          _float(un_joules)), strict=True))
    return out


def _float(value: Any) -> float | None:
    return float(value) if value is not None else None


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
