"""Failed-authentication throttling: a bounded, in-process record of refused credentials per key
(a client address or an API key id) that makes a key wait, unverified, once it has failed too often.

A key that fails ``failures`` times, each failure within ``window_s`` of the one before (or of the
end of its last wait), waits 1 s, then 2 s, 4 s ... up to ``max_backoff_s`` after each further
failure; ``window_s`` without a failure forgives it. A success forgives nothing: an attacker with
one valid key of its own must not be able to clear the failures of its guesses. At most
``capacity`` keys are tracked and the key that failed least recently is forgotten first, so a flood
of distinct addresses costs bounded memory; at worst it makes this worker forget a key, which then
has to fail ``failures`` times again.

The state is per worker process: with N workers a caller gets up to N times the failures. Written
here rather than with ``limits`` because ``limits`` counts hits in windows but has no growing
backoff, and its memory storage keeps every key until it expires.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["FailureThrottle"]


class FailureThrottle:
    """Failures per key; :meth:`retry_after` says how long a key must still wait."""

    __slots__ = ("_clock", "_entries", "capacity", "failures", "max_backoff_s", "window_s")

    def __init__(
        self, failures: int, window_s: float, max_backoff_s: float, capacity: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.window_s = window_s
        self.max_backoff_s = max_backoff_s
        self.capacity = capacity
        self._clock = clock
        # key -> [failures in a row, end of the current wait (or time of the last failure)]
        self._entries: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        """Keys tracked; 0 (false) when nothing failed lately, which callers test before anything else."""
        return len(self._entries)

    def retry_after(self, key: str) -> int | None:
        """Whole seconds ``key`` must still wait, or None when it may try now."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        left = entry[1] - self._clock()
        return math.ceil(left) if left > 0 else None

    def failed(self, key: str) -> None:
        """Record a refused credential of ``key``."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is None or now - entry[1] >= self.window_s:
            entry = [0, now]
        entry[0] += 1
        over = entry[0] - self.failures
        entry[1] = now + min(2.0 ** min(over, 32), self.max_backoff_s) if over >= 0 else now
        self._entries[key] = entry
        self._entries.move_to_end(key)
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
