"""Choosing a replica, and the pool-wide retry budget: small mechanisms with no I/O.

Least-outstanding with power-of-two choices (Mitzenmacher's "two choices"; the policy vLLM's router
and Envoy's ``LEAST_REQUEST`` use): draw two replicas at random (by weight), send to the one with
fewer requests in flight per unit of weight. Comparing two, not all, keeps a burst from piling
onto the single least-loaded replica and costs O(1). Round robin (smooth weighted, as nginx does)
is the reference it is measured against (``bench/fleet.py``).

Least-outstanding equalises requests in flight, not waiting: by Little's law a replica 10x slower
holding as many requests as the others still answers about 1/(1 + 10 (n - 1)) of them (1/31 of
four), which is above 1 %, so the pool's p99 is the slow replica's latency. ``LatencyWeighted``
(the pool's default) weighs the requests in flight by each replica's recent speed, ``(outstanding
+ 1) x estimate / weight``, as Finagle's and Linkerd's peak-EWMA balancers do; three changes,
measured here: the estimate is an EWMA per answer (each answer weighs ``ALPHA``), not a
peak-following one (on a loaded box one slow answer of a fast replica held its estimate up for
seconds and sent the slow replica traffic again); it decays toward 0 while the rest of the pool
answers and this replica does not (by count of answers, not time: an idle pool forgets nothing),
so an avoided replica is tried again now and then, about once per ``decay_answers / 2`` answers,
and its next answer re-measures it; and it is a time per output token, not per answer.

Why per output token: an LLM answer's time grows with its length (decode is one step per token),
so timing whole answers makes a replica that just served long answers look slow and sends it
nothing, however fast it is. The sample is the answer's whole time (a stream's to its end) over its
output tokens; the fixed part (queueing, prefill: what a time-to-first-byte or TTFT would measure)
stays inside each sample rather than being a second estimate, because (1) a non-streamed answer's
first byte comes with its last, so only streams could measure it and non-streamed traffic would
never feed it; (2) two estimates only combine into one cost with a guessed answer length, and
compared between replicas a per-token time needs none (the same length multiplies both); (3)
waiting in a replica's queue is what ``outstanding + 1`` already counts. What stays: a short answer
carries its fixed part over fewer tokens, so a replica that just served only short answers reads
slower per token than one that served long ones (by the prefill over the length, far less than the
length ratio whole-answer timing was off by), and two random choices spread lengths evenly over
time. O(1) per answer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Protocol


class Loaded(Protocol):
    """What the balancers read and keep on a replica."""

    weight: float
    outstanding: int
    rr_current: float
    rtt_s: float
    rtt_at: int


def _two(candidates: Sequence[Loaded], rng: random.Random) -> tuple[Loaded, Loaded]:
    first = _weighted(candidates, rng)
    return first, _weighted([c for c in candidates if c is not first], rng)


class LeastOutstanding:
    """Power of two choices on ``(outstanding + 1) / weight`` (the +1: weight decides between idle replicas)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, candidates: Sequence[Loaded]) -> Loaded:
        if len(candidates) == 1:
            return candidates[0]
        first, second = _two(candidates, self._rng)
        if (second.outstanding + 1) * first.weight < (first.outstanding + 1) * second.weight:
            return second
        return first


class LatencyWeighted:
    """Power of two choices on ``(outstanding + 1) x estimate / weight``, the estimate an EWMA of
    seconds per output token (see the module docstring)."""

    ALPHA = 0.5  # weight of each new answer in the estimate: two answers mostly replace it

    def __init__(self, decay_answers: int = 1000, rng: random.Random | None = None) -> None:
        self.decay_answers = decay_answers
        self.answers = 0  # answers the pool has observed: the clock estimates decay by
        self._rng = rng or random.Random()

    def estimate(self, c: Loaded) -> float:
        """The latency estimate of ``c`` now: its EWMA, decayed toward 0 by the pool's answers since its own last."""
        return c.rtt_s * math.exp(-(self.answers - c.rtt_at) / self.decay_answers)

    def observe(self, c: Loaded, rtt_s: float, raise_only: bool = False) -> None:
        """One answer of ``c`` took ``rtt_s`` per output token; ``raise_only`` (a failed attempt):
        counted only when it is slower than the estimate, so failing fast never makes ``c`` look fast."""
        estimate = self.estimate(c)
        if raise_only and rtt_s <= estimate:
            return
        c.rtt_s = estimate * (1.0 - self.ALPHA) + rtt_s * self.ALPHA
        self.answers += 1
        c.rtt_at = self.answers

    def pick(self, candidates: Sequence[Loaded]) -> Loaded:
        if len(candidates) == 1:
            return candidates[0]
        first, second = _two(candidates, self._rng)
        cost_first = (first.outstanding + 1) * self.estimate(first) / first.weight
        cost_second = (second.outstanding + 1) * self.estimate(second) / second.weight
        return second if cost_second < cost_first else first


class RoundRobin:
    """Smooth weighted round robin: each replica in turn, ``weight`` times as often as a weight of 1."""

    def pick(self, candidates: Sequence[Loaded]) -> Loaded:
        total = 0.0
        best = candidates[0]
        for c in candidates:
            c.rr_current += c.weight
            total += c.weight
            if c.rr_current > best.rr_current:
                best = c
        best.rr_current -= total
        return best


def _weighted(candidates: Sequence[Loaded], rng: random.Random) -> Loaded:
    first = candidates[0].weight
    if all(c.weight == first for c in candidates):
        return candidates[int(rng.random() * len(candidates))]
    return rng.choices(candidates, [c.weight for c in candidates])[0]


class RetryBudget:
    """Retries allowed pool-wide: within the last ``window_s`` seconds, at most ``ratio`` times the
    requests plus ``minimum`` (so a quiet pool can still retry), as Linkerd's and Finagle's retry
    budgets do. Counted in one-second buckets: O(1) per request."""

    def __init__(self, ratio: float, minimum: int, window_s: int) -> None:
        self.ratio, self.minimum, self.window = ratio, minimum, max(1, int(window_s))
        self._seconds = [-1] * self.window
        self._requests = [0] * self.window
        self._retries = [0] * self.window

    def _bucket(self, now: float) -> int:
        second = int(now)
        i = second % self.window
        if self._seconds[i] != second:
            self._seconds[i], self._requests[i], self._retries[i] = second, 0, 0
        return i

    def _live(self, now: float) -> tuple[int, int]:
        oldest = int(now) - self.window
        requests = retries = 0
        for second, req, ret in zip(self._seconds, self._requests, self._retries, strict=True):
            if second > oldest:
                requests += req
                retries += ret
        return requests, retries

    def request(self, now: float) -> None:
        """A request's first attempt."""
        self._requests[self._bucket(now)] += 1

    def try_retry(self, now: float) -> bool:
        """Take one retry from the budget; False when it is spent."""
        requests, retries = self._live(now)
        if retries + 1 > self.ratio * requests + self.minimum:
            return False
        self._retries[self._bucket(now)] += 1
        return True
