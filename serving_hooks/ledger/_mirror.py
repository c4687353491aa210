"""Usage rows of shadow mirrors: the challenger's real work on a copy of a request, never billed.

A mirror (:class:`~serving_hooks.backends.shadow.Mirrored`) is one row with ``billable`` false and
``shadow`` true: the user request's tenant, subject, key and trace id, the challenger's version,
tokens, outcome and timings, the price in force for the user request (recorded) and a cost of 0
(charged nothing; None when the model is not priced). Totals (:mod:`._read`) count such rows apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpt_observatory.serving_hooks.ledger._row import UsageRow, iso, new_request_id


def mirror_row(mirror: Any) -> UsageRow:
    """The row of one mirror (a :class:`~serving_hooks.backends.shadow.Mirrored`)."""
    caller, ctx = mirror.caller, mirror.ctx
    principal = getattr(caller, "principal", None)
    price = getattr(caller, "price", None)
    return UsageRow(
        request_id=new_request_id(),
        time=iso(mirror.arrived),
        tenant=getattr(caller, "tenant", None) or ctx.tenant,
        route=mirror.route,
        outcome="error" if mirror.error is not None else "ok",
        status=mirror.status,
        input_tokens=ctx.input_tokens,
        output_tokens=ctx.output_tokens,
        cached_tokens=getattr(ctx, "cached_tokens", None),
        trace_id=mirror.trace_id,
        subject=getattr(principal, "subject_hash", None),
        key_id=getattr(principal, "key_id", None),
        model=mirror.model,
        model_version=mirror.version,
        stream=mirror.stream,
        latency_s=mirror.duration_s,
        ttft_s=mirror.ttft_s,
        price_input_micro_per_1m=getattr(price, "input_micro_per_1m", None),
        price_output_micro_per_1m=getattr(price, "output_micro_per_1m", None),
        currency=getattr(price, "currency", None) or getattr(caller, "currency", None),
        cost_micro=0 if price is not None else None,
        gpu_seconds=getattr(ctx, "gpu_seconds", None),
        gpu_joules=getattr(ctx, "gpu_joules", None),
        billable=False,
        shadow=True,
    )


def mirror_recorder(ledger: Any) -> Callable[[Any], None]:
    """What a shadow router calls with each mirror (``ShadowRouter.on_mirror``): its row to ``ledger``."""

    def record(mirror: Any) -> None:
        ledger.submit(mirror_row(mirror))  # a dropped row is the ledger's to count; nobody waits for it

    return record
