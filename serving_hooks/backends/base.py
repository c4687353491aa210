"""The model-backend interface: one served model behind one alias/role, and the router that picks one.

A backend turns a validated OpenAI call into an ASGI response, wrapping the generation in the
inference hooks. The :class:`ModelRouter` maps roles (``champion``, later ``challenger``) to
backends; challenger routing is a different :meth:`ModelRouter.select`, not a different backend.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from gpt_observatory.serving_hooks._openai import ChatCompletionRequest, CompletionRequest
from gpt_observatory.serving_hooks.context import RequestContext, prompt_bytes


@dataclass(slots=True)
class Call:
    """One OpenAI call as a backend receives it."""

    operation: str  # names.GEN_AI_OPERATION_CHAT | names.GEN_AI_OPERATION_TEXT_COMPLETION
    request: ChatCompletionRequest | CompletionRequest
    raw: bytes  # the body as the caller sent it (proxied as is when possible)
    ctx: RequestContext | None  # the gateway's per-request context (None without the gateway)


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether a backend can serve: ``status`` is ``ok``, ``degraded`` (serving, dependency down) or
    ``unavailable``; ``detail`` says what is wrong."""

    ready: bool
    status: str
    detail: str = ""
    info: Mapping[str, Any] | None = None


class ModelBackend(ABC):
    """One served model (or upstream) in one role."""

    role: str = "champion"

    @abstractmethod
    async def start(self) -> None:
        """Load or connect; must not block the event loop."""

    @abstractmethod
    async def close(self) -> None:
        """Release threads, sessions and pollers."""

    @abstractmethod
    async def readiness(self) -> Readiness: ...

    @abstractmethod
    async def models(self) -> list[dict[str, Any]]:
        """OpenAI model cards this backend serves."""

    @abstractmethod
    async def handle(self, call: Call) -> Response:
        """Answer one call (streaming or not); errors to answer are raised as ``ApiError``."""

    def estimate_tokens(self, body: Mapping[str, Any]) -> int:
        """Prompt tokens before the call, for the tokens-per-minute check (bytes: a byte-level tokenizer)."""
        return prompt_bytes(body)


class ModelRouter:
    """Roles to backends; :meth:`select` picks the champion (the canary adds challenger routing)."""

    def __init__(self, backends: Mapping[str, ModelBackend]) -> None:
        if "champion" not in backends:
            raise ValueError("a model router needs a 'champion' backend")
        self.backends = dict(backends)

    @property
    def champion(self) -> ModelBackend:
        return self.backends["champion"]

    def select(self, call: Call) -> ModelBackend:
        return self.backends["champion"]

    def estimate_tokens(self, body: Mapping[str, Any]) -> int:
        return self.champion.estimate_tokens(body)

    async def start(self) -> None:
        for backend in self.backends.values():
            await backend.start()

    async def close(self) -> None:
        for backend in self.backends.values():
            await backend.close()


def bytes_per_token_estimate(body: Mapping[str, Any], bytes_per_token: float = 4.0) -> int:
    """A subword-tokenizer estimate (about 4 bytes a token) for upstream models."""
    return math.ceil(prompt_bytes(body) / bytes_per_token)
