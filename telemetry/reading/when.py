"""When a reading starts or stops: ``--since``/``--until`` of ``observatory logs`` and ``trace``."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_NS: Final = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}
_UNIT_NS["w"] = 7 * _UNIT_NS["d"]


def parse_when(text: str, now_ns: int) -> int:
    """``10m``, ``2h``, ``1.5d`` (that long before ``now_ns``) or an ISO 8601 timestamp (UTC unless
    it names a zone), as Unix nanoseconds. Raises ``ValueError`` naming the accepted forms."""
    if m := _DURATION.match(text):
        return now_ns - int(float(m[1]) * _UNIT_NS[m[2]])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30s, 10m, 2h, 1d, 1w) nor an ISO timestamp (2026-01-31T14:05:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp()) * 10**9 + when.microsecond * 1000
