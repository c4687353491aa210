"""Serving hooks: the ASGI gateway (spans, HTTP metrics, metering, rate limits, size and JSON checks),
credential verification, GenAI inference instrumentation and the reference OpenAI-compatible app.

Names are imported on first use, so ``import serving_hooks`` loads nothing heavy (no FastAPI,
aiohttp or MLflow until asked for).
"""

from __future__ import annotations

from gpt_observatory._lazy import exports

_WHERE = {
    "GatewayMiddleware": "gpt_observatory.serving_hooks.gateway",
    "GatewayConfig": "gpt_observatory.serving_hooks.gateway",
    "RequestContext": "gpt_observatory.serving_hooks.context",
    "request_context": "gpt_observatory.serving_hooks.context",
    "RateLimiter": "gpt_observatory.serving_hooks.ratelimit",
    "GenAIHooks": "gpt_observatory.serving_hooks.inference",
    "GenAIRequest": "gpt_observatory.serving_hooks.inference",
    "Generation": "gpt_observatory.serving_hooks.inference",
    "GenerationStats": "gpt_observatory.serving_hooks.inference",
    "ModelInfo": "gpt_observatory.serving_hooks.inference",
    "ServeSettings": "gpt_observatory.serving_hooks.settings",
    "CanaryPolicy": "gpt_observatory.serving_hooks.backends.canary",
    "CanaryRouter": "gpt_observatory.serving_hooks.backends.canary",
    "create_app": "gpt_observatory.serving_hooks.app",
    "Authenticator": "gpt_observatory.serving_hooks.auth",
    "AuthError": "gpt_observatory.serving_hooks.auth",
    "AuthSettings": "gpt_observatory.serving_hooks.auth",
    "Principal": "gpt_observatory.serving_hooks.auth",
}

__all__ = sorted(_WHERE)

__getattr__ = exports(__name__, _WHERE)
