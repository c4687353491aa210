"""Canary routing: a share of requests (and/or named tenants) goes to the ``challenger``, the rest
to the ``champion``.

The challenger takes traffic only while it has a loaded model. With the ``mlflow`` backend that is
exactly while its registry alias exists: the challenger's poller unloads it when the alias is
deleted, so the canary flow ending a canary (promote, reject, inconclusive) sets every gateway's
share back to 0 at its next poll, without a restart or a message to each replica. The configured
share applies again when a new version takes the alias.

Stickiness hashes a key with CRC-32 (the same in every process and replica, unlike ``hash()``),
salted with the challenger's version so each canary draws a fresh cohort.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, get_args

from gpt_observatory.serving_hooks.backends.base import Call, ModelBackend, ModelRouter
from gpt_observatory.serving_hooks.backends.inprocess import InProcessBackend
from gpt_observatory.serving_hooks.settings import CanarySticky
from gpt_observatory.telemetry import names

_STICKY: tuple[str, ...] = get_args(CanarySticky)
_SCALE = float(1 << 32)


@dataclass(frozen=True, slots=True)
class CanaryPolicy:
    """Who goes to the challenger while it is loaded.

    ``share``: fraction of requests (0..1). ``tenants``: always the challenger. ``sticky``: ``none``
    draws per request; ``tenant`` keeps each tenant on one side; ``session`` keeps each OpenAI
    ``user`` value on one side (requests without one are drawn per request).
    """

    share: float = 0.0
    tenants: frozenset[str] = frozenset()
    sticky: CanarySticky = "none"

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"canary share must be within 0..1, got {self.share}")
        if self.sticky not in _STICKY:
            raise ValueError(f"canary sticky must be one of {', '.join(map(repr, _STICKY))}, got {self.sticky!r}")

    @classmethod
    def of(cls, share: float, tenants: Iterable[str] = (), sticky: CanarySticky = "none") -> CanaryPolicy:
        return cls(share, frozenset(tenants), sticky)


def bucket(salt: str, key: str) -> float:
    """A stable position in [0, 1) for ``key`` (same in every process)."""
    return zlib.crc32(f"{salt}\x00{key}".encode()) / _SCALE


class CanaryRouter(ModelRouter):
    """Routes between an in-process ``champion`` and ``challenger`` by :class:`CanaryPolicy`."""

    def __init__(self, champion: InProcessBackend, challenger: InProcessBackend, policy: CanaryPolicy) -> None:
        super().__init__({names.MODEL_ROLE_CHAMPION: champion, names.MODEL_ROLE_CHALLENGER: challenger})
        self._champion: ModelBackend = champion
        self._challenger = challenger
        self.policy = policy
        self._random = random.random

    def select(self, call: Call) -> ModelBackend:
        loaded = self._challenger.current
        if loaded is None:  # no challenger alias (or not loaded yet): everything to the champion
            return self._champion
        policy = self.policy
        ctx = call.ctx
        tenant = ctx.tenant if ctx is not None else None
        if tenant in policy.tenants:
            return self._challenger
        share = policy.share
        if share <= 0.0:
            return self._champion
        if share >= 1.0:
            return self._challenger
        key = tenant if policy.sticky == "tenant" else call.request.user if policy.sticky == "session" else None
        draw = self._random() if key is None else bucket(loaded.info.version or "", key)
        return self._challenger if draw < share else self._champion

    def effective_share(self) -> float:
        """The share of (non-named-tenant) traffic the challenger gets now: 0 without a loaded challenger."""
        return self.policy.share if self._challenger.current is not None else 0.0

    def canary_status(self) -> dict[str, Any]:
        """What ``/readyz`` shows about the canary."""
        loaded = self._challenger.current
        info = loaded.info if loaded is not None else None
        return {
            "share": self.effective_share(),
            "configured_share": self.policy.share,
            "tenants": sorted(self.policy.tenants) if info is not None else [],
            "sticky": self.policy.sticky,
            "challenger": None if info is None else {"name": info.name, "version": info.version, "alias": info.alias},
        }
