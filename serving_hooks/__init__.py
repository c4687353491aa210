"""Serving hooks: the ASGI gateway (spans, HTTP metrics, metering, rate limits, size and JSON checks),
credential verification, GenAI inference instrumentation and the reference OpenAI-compatible app.

Names are imported on first use, so ``import serving_hooks`` loads nothing heavy (no FastAPI,
aiohttp or MLflow until asked for).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "GatewayMiddleware": "serving_hooks.gateway",
    "GatewayConfig": "serving_hooks.gateway",
    "RequestContext": "serving_hooks.context",
    "request_context": "serving_hooks.context",
    "RateLimiter": "serving_hooks.ratelimit",
    "GenAIHooks": "serving_hooks.inference",
    "GenAIRequest": "serving_hooks.inference",
    "Generation": "serving_hooks.inference",
    "GenerationStats": "serving_hooks.inference",
    "ModelInfo": "serving_hooks.inference",
    "ServeSettings": "serving_hooks.settings",
    "CanaryPolicy": "serving_hooks.backends.canary",
    "CanaryRouter": "serving_hooks.backends.canary",
    "create_app": "serving_hooks.app",
    "Authenticator": "serving_hooks.auth",
    "AuthError": "serving_hooks.auth",
    "AuthSettings": "serving_hooks.auth",
    "Principal": "serving_hooks.auth",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'serving_hooks' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
