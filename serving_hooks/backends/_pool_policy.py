"""What a replica pool is given: its replicas, its policy, and the error it raises when no replica
can take a request (re-exported by ``pool.py``, the module the catalog imports them from)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from gpt_observatory.serving_hooks._errors import ApiError

Balancer = Literal["least_outstanding", "latency_weighted", "round_robin"]
_BALANCERS = ("least_outstanding", "latency_weighted", "round_robin")


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """One replica: its OpenAI base URL (e.g. ``http://h:8001/v1``; credentials in the URL allowed,
    as for :class:`UpstreamBackend`), its telemetry name (bounded, unique in its pool), its weight
    and its own API key."""

    url: str
    name: str
    weight: float = 1.0
    api_key: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError(f"replica {self.url!r}: name must not be empty")
        if not self.weight > 0:
            raise ValueError(f"replica {self.name!r}: weight must be > 0, got {self.weight}")


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    """How a pool balances, checks and retries. Built from a catalog table as ``PoolPolicy(**table)``:
    an unknown key is a ``TypeError`` naming it, a bad value a ``ValueError`` naming the field.

    - ``balancer``: ``latency_weighted`` (the default: two random choices, fewer requests in flight
      per weight wins, weighed by each replica's recent time per output token; keeps a slow replica
      out of the p99 where plain least-outstanding does not, ``bench/fleet.py``), ``least_outstanding``
      (the same without the weighing) or ``round_robin``.
    - ``latency_decay_answers``: ``latency_weighted``'s memory: a replica's estimate falls by e per
      this many answers of the pool without one of its own (so an avoided replica is tried again
      about once per half that many); measured on every answer, streamed or not, per output token.
    - ``probe_path``: what the active probe GETs: None for ``{url}/models``; a path starting with ``/``
      on the replica's origin (vLLM: ``/health``). ``probe_interval_s``: seconds between probe rounds
      (0: no active probes); ``probe_timeout_s``: a probe slower than this fails.
    - ``healthy_threshold`` / ``unhealthy_threshold``: probes in a row that pass / fail before a
      replica is marked healthy / unhealthy.
    - ``probe_readmits``: passing ``healthy_threshold`` probes readmits an ejected replica early.
    - ``consecutive_errors``: failed attempts in a row (connect errors, resets, timeouts, 5xx,
      broken answers) that eject a replica.
    - ``base_ejection_s``: the first ejection's length; the n-th lasts n times this (the count drops
      by one per ``base_ejection_s`` spent back in the pool), at most ``max_ejection_s``.
    - ``max_ejected_share``: at most this share of the pool ejected at once (always at least one).
    - ``max_attempts``: attempts per request, the first included (1: no retries).
    - ``retry_ratio``, ``retry_min``, ``retry_window_s``: pool-wide retry budget: over the last
      ``retry_window_s`` seconds at most ``retry_ratio`` retries per request, plus ``retry_min``.
    """

    balancer: Balancer = "latency_weighted"
    latency_decay_answers: int = 1000
    probe_path: str | None = None
    probe_interval_s: float = 5.0
    probe_timeout_s: float = 2.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    probe_readmits: bool = True
    consecutive_errors: int = 5
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejected_share: float = 0.5
    max_attempts: int = 3
    retry_ratio: float = 0.2
    retry_min: int = 10
    retry_window_s: int = 10

    def __post_init__(self) -> None:
        def bad(field: str, rule: str) -> ValueError:
            return ValueError(f"pool policy {field} {rule}, got {getattr(self, field)!r}")

        if self.balancer not in _BALANCERS:
            raise bad("balancer", f"must be one of {', '.join(map(repr, _BALANCERS))}")
        if self.probe_path is not None and not self.probe_path.startswith("/"):
            raise bad("probe_path", "must start with '/' (a path on the replica's origin) or be unset")
        for field in ("probe_timeout_s", "base_ejection_s", "max_ejection_s"):
            if not getattr(self, field) > 0:
                raise bad(field, "must be > 0")
        if self.probe_interval_s < 0:
            raise bad("probe_interval_s", "must be >= 0 (0: no active probes)")
        for field in ("healthy_threshold", "unhealthy_threshold", "consecutive_errors", "max_attempts",
                      "retry_window_s", "latency_decay_answers"):
            if not (isinstance(getattr(self, field), int) and getattr(self, field) >= 1):
                raise bad(field, "must be an integer >= 1")
        if not 0.0 <= self.max_ejected_share <= 1.0:
            raise bad("max_ejected_share", "must be within 0..1")
        if self.retry_ratio < 0 or not isinstance(self.retry_min, int) or self.retry_min < 0:
            raise bad("retry_ratio" if self.retry_ratio < 0 else "retry_min", "must be >= 0")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


class NoHealthyReplica(ApiError):
    """503: no replica of the pool can take the request now (the catalog falls back on it)."""

    __slots__ = ()

    @classmethod
    def of(cls, model: str, detail: str) -> NoHealthyReplica:
        return cls(503, f"no replica of model {model!r} can take the request ({detail}); retry later",
                   "server_error", "no_healthy_replica", "upstream", [(b"retry-after", b"1")])
