"""The per-request context the gateway owns and the layers below it read and fill.

The gateway puts a :class:`RequestContext` in ``scope["state"]["observatory"]`` (Starlette:
``request.state.observatory``): the app reads the principal, the parsed body and (on the completion
routes) the request the gateway validated there; the
inference layer reports the tokens really used (``record_usage``), which the gateway meters and
charges to the tokens-per-minute budget once the response is complete.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

STATE_KEY = "observatory"


class PrincipalLike(Protocol):
    tenant: str
    subject_hash: str


@dataclass(slots=True)
class RequestContext:
    """Per-request state the gateway owns. The app reads ``principal``/``json``; the inference layer
    reports usage with :meth:`record_usage`; a backend marks upstream failures in ``rejection``."""

    principal: PrincipalLike | None = None
    tenant: str = "anonymous"
    body: bytes = b""
    json: dict[str, Any] | None = None
    request: Any = None  # the validated OpenAI request (_openai.REQUEST_MODELS routes), read before any field
    prompt_estimate: int = 0  # the gateway's estimate of the prompt's tokens (completion routes)
    input_tokens: int = 0
    output_tokens: int = 0
    rejection: str | None = None  # names.REJECTION_REASONS
    rate_limit_kind: str | None = None  # names.RATE_LIMIT_KINDS, when rejection is "rate_limit"
    model: Any = None  # the ModelInfo (name, version, alias, role) of the in-process model that answered
    # Set by a layer below when the response failed after its status went out (a stream cut, truncated
    # or ended by shutdown): the gateway then records the request as an error whatever the status said.
    error_type: str | None = None
    # Pricing (issue 17): the serving_hooks.prices.Price in force when the budget was reserved and the
    # settled cost in integer micro-units of its currency (the gateway sets them; the ledger records them).
    price: Any = None
    cost_micro: int | None = None
    # Set by an upstream backend (issue 17): the prompt tokens the upstream served from its cache
    # (validated usage.prompt_tokens_details.cached_tokens) and the pool replica that answered (its
    # catalog name or host:port: a label without credentials).
    cached_tokens: int | None = None
    replica: str | None = None
    # GPU energy (issue 17): the GPU-seconds and joules telemetry.gpu_energy attributed to the in-process
    # generation that answered; None (not 0) where nothing was measured (no NVML, no GPU, a model on the CPU
    # or behind an upstream).
    gpu_seconds: float | None = None
    gpu_joules: float | None = None

    def record_usage(self, input_tokens: int, output_tokens: int) -> None:
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens


def request_context(scope: MutableMapping[str, Any]) -> RequestContext | None:
    """The gateway's context for this request (``None`` when the gateway is not in front)."""
    state = scope.get("state")
    return state.get(STATE_KEY) if state else None


def prompt_bytes(body: Mapping[str, Any]) -> int:
    """UTF-8 bytes of the prompt text in an OpenAI chat or completions body (byte-level token estimate)."""
    total = 0
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        total += len(prompt.encode())
    elif isinstance(prompt, list):
        total += sum(len(p.encode()) for p in prompt if isinstance(p, str))
    messages = body.get("messages")  # unvalidated here: anything that is not a list counts nothing
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content.encode())
        elif isinstance(content, list):
            total += sum(len(str(p.get("text", "")).encode()) for p in content if isinstance(p, dict))
    return total
