"""Pure ASGI, outside the gateway: one usage row per completion request, from the gateway's context.

It sees the request after the gateway's own end (tokens settled, the prompt estimate charged to a cut
stream), so the row holds what the gateway metered and charged. The row is appended to the spool
before the response's last message goes out (one ``os.write``), so a response the caller saw complete
is in the ledger even if the gateway is killed the next instant; with ``spool_sync="full"`` the last
message also waits (at most ``commit_wait_s``, the event loop never blocked) for the row's fsync.
Requests refused before the caller was identified or the model was known (400, 401, 403, 404, 405,
413) are not rows: nothing was used and nobody to bill.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpt_observatory.serving_hooks.context import STATE_KEY
from gpt_observatory.serving_hooks.ledger._ledger import Ledger
from gpt_observatory.serving_hooks.ledger._row import UsageRow, iso, new_request_id

PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
_NOT_ROWS = frozenset({400, 401, 403, 404, 405, 413})


class LedgerMiddleware:
    def __init__(self, app: ASGIApp, ledger: Ledger, paths: frozenset[str] = PATHS) -> None:
        self.app = app
        self.ledger = ledger
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # the gateway puts its context in this same dict
        arrived, start = time.time(), time.perf_counter()
        status = 500
        first: float | None = None
        trace_id: str | None = None
        held: Message | None = None
        left = False

        async def watching() -> Message:
            nonlocal left
            message = await receive()
            if message["type"] == "http.disconnect" and held is None:
                left = True
            return message

        async def holding(message: Message) -> None:
            nonlocal status, first, trace_id, held
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                tid = trace.get_current_span().get_span_context().trace_id
                trace_id = format(tid, "032x") if tid else None
            elif kind == "http.response.body":
                if first is None and message.get("body"):
                    first = time.perf_counter()
                if not message.get("more_body", False):
                    held = message  # sent once the row is durable
                    return
            await send(message)

        try:
            await self.app(scope, watching, holding)
        finally:
            ctx = state.get(STATE_KEY)
            written = False
            if ctx is not None and status not in _NOT_ROWS:
                row = _row(scope, ctx, status, arrived, start, first, trace_id, left or held is None)
                written = self.ledger.submit(row)  # in the spool (page cache) before the caller's last bytes
            if held is not None:
                if written and self.ledger.hold and self.ledger.commit_wait_s > 0:
                    await self._synced()
                await send(held)

    async def _synced(self) -> None:
        """Wait (at most ``commit_wait_s``) for a batched fsync to cover the row just written."""
        future = self.ledger.synced()
        if future is None:
            return
        # Not wait_for: a timer that gives up on the future costs less than a task per request.
        expiry = asyncio.get_running_loop().call_later(self.ledger.commit_wait_s, _give_up, future)
        await future
        expiry.cancel()


def _row(scope: Scope, ctx: Any, status: int, arrived: float, start: float, first: float | None,
         trace_id: str | None, unfinished: bool) -> UsageRow:
    request = ctx.request
    principal = ctx.principal
    model_info = ctx.model
    if status >= 500 or ctx.error_type is not None:  # an upstream's failure is also a ctx.rejection
        outcome = "error"
    elif ctx.rejection is not None or status == 429:
        outcome = "rejected"
    elif unfinished:
        outcome = "cancelled"
    else:
        outcome = "ok"
    return UsageRow(
        request_id=new_request_id(),
        time=iso(arrived),
        tenant=ctx.tenant,
        route=scope["path"],
        outcome=outcome,
        status=status,
        input_tokens=ctx.input_tokens,
        output_tokens=ctx.output_tokens,
        cached_tokens=getattr(ctx, "cached_tokens", None),
        trace_id=trace_id,
        subject=getattr(principal, "subject_hash", None),
        key_id=getattr(principal, "key_id", None),
        model=getattr(request, "model", None),
        model_version=getattr(model_info, "version", None),
        replica=getattr(ctx, "replica", None),
        stream=bool(getattr(request, "stream", False)),
        latency_s=time.perf_counter() - start,
        ttft_s=(first - start) if first is not None else None,
        **_priced(ctx),
        gpu_seconds=getattr(ctx, "gpu_seconds", None),
        gpu_joules=getattr(ctx, "gpu_joules", None),
    )


def _priced(ctx: Any) -> dict[str, Any]:
    """The price used and the cost, from the pricing layer's marks on the context (issue 17, Deliver 2):
    ``ctx.price`` (a :class:`serving_hooks.prices.Price`) and ``ctx.cost_micro`` when it settled one (else
    the cost is worked out here from the price and the row's tokens). Nothing marked: None (not priced)."""
    price = getattr(ctx, "price", None)
    cost = getattr(ctx, "cost_micro", None)
    if price is None:
        return {"price_input_micro_per_1m": None, "price_output_micro_per_1m": None,
                "currency": getattr(ctx, "currency", None), "cost_micro": cost}
    if cost is None:
        from gpt_observatory.serving_hooks.prices import cost_micro

        cost = cost_micro(price, ctx.input_tokens, ctx.output_tokens, getattr(ctx, "cached_tokens", None) or 0,
                          getattr(ctx, "gpu_seconds", None))
    return {"price_input_micro_per_1m": price.input_micro_per_1m, "price_output_micro_per_1m": price.output_micro_per_1m,
            "currency": price.currency, "cost_micro": cost}


def _give_up(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
