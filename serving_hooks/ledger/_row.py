"""One usage row: what one request used, priced, as the ledger stores it."""

from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any


@dataclass(slots=True)
class UsageRow:
    """One request. Prices and cost are integer micro-units of ``currency`` (None: not priced); GPU
    figures are None when nothing measured them (never 0 for "unknown")."""

    request_id: str
    time: str  # ISO 8601 UTC, microseconds: when the request arrived
    tenant: str
    route: str
    outcome: str  # names.LEDGER_OUTCOMES
    status: int
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int | None = None
    trace_id: str | None = None
    subject: str | None = None  # the subject's salted hash, never the subject
    key_id: str | None = None
    model: str | None = None  # the catalog name the caller asked for
    model_version: str | None = None  # the MLflow version that answered (in-process models)
    replica: str | None = None
    stream: bool = False
    latency_s: float = 0.0
    ttft_s: float | None = None
    price_input_micro_per_1m: int | None = None
    price_output_micro_per_1m: int | None = None
    currency: str | None = None
    cost_micro: int | None = None
    gpu_seconds: float | None = None
    gpu_joules: float | None = None
    billable: bool = True  # False: nobody is charged for it (a shadow mirror); totals count it apart
    shadow: bool = False  # a copy of a request sent to the challenger (serving_hooks.backends.shadow)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UsageRow:
        """The row ``data`` holds; a column it lacks (a row spooled before that column existed) takes its
        default (``billable``: True), a key that is no column is left out."""
        try:
            return cls(**data)  # the usual case, and the cheap one
        except TypeError:
            return cls(**{k: data[k] for k in COLUMNS if k in data})


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(UsageRow))
VALUES = attrgetter(*COLUMNS)  # a row's values in COLUMNS order (a tuple, read in C)


def iso(epoch_s: float) -> str:
    """``epoch_s`` as the ledger writes times: ISO 8601 UTC with microseconds (sorts as text)."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="microseconds")


_PREFIX = os.urandom(8).hex()  # this process's: 64 random bits (re-drawn in a child, see below)
_COUNTER = itertools.count()


def new_request_id() -> str:
    """A request id unique across processes and restarts: this process's random prefix and a count
    (a fraction of uuid4's cost on the request path, which draws 16 bytes from the kernel each time)."""
    return f"{_PREFIX}{next(_COUNTER):016x}"


def _redraw() -> None:
    global _PREFIX, _COUNTER
    _PREFIX, _COUNTER = os.urandom(8).hex(), itertools.count()


os.register_at_fork(after_in_child=_redraw)  # a forked worker must not repeat its parent's ids
