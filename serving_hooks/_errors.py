"""OpenAI-style error answers (``{"error": {"message", "type", "code"}}``), sent as raw ASGI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import Send


@dataclass(slots=True)
class ApiError(Exception):
    """An error answered to the caller; ``reason`` is the rejection reason metered (or None)."""

    status: int
    message: str
    type: str
    code: str
    reason: str | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": self.type, "code": self.code, "param": None}})

    async def send(self, send: Send) -> None:
        body = self.body()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *self.headers,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"request body exceeds {limit} bytes; send a smaller request", "invalid_request_error",
        "request_too_large", "too_large",
    )


def bad_json(detail: str) -> ApiError:
    return ApiError(
        400, f"request body is not a JSON object: {detail}", "invalid_request_error", "invalid_json", "bad_request"
    )


def invalid_request(errors: list[Any]) -> ApiError:
    """The 400 for a body that is JSON but not a valid request (pydantic ``errors()``): names the first field at fault."""
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return ApiError(
        400, f"invalid request: {where or 'body'}: {first.get('msg', 'invalid')}", "invalid_request_error",
        "invalid_request", "bad_request",
    )


def duplicate_header(name: str) -> ApiError:
    return ApiError(
        400, f"the {name} header appears more than once; send it once", "invalid_request_error",
        "duplicate_header", "bad_request",
    )


def method_not_allowed(method: str, allowed: str) -> ApiError:
    return ApiError(
        405, f"{method} is not allowed here; use {allowed}", "invalid_request_error", "method_not_allowed",
        "bad_request", [(b"allow", allowed.encode())],
    )


def rate_limited(kind: str, retry_after: int) -> ApiError:
    what = "requests per minute" if kind == "requests" else "tokens per minute"
    return ApiError(
        429, f"rate limit reached for {what}; retry after {retry_after} s", "rate_limit_error",
        "rate_limit_exceeded", "rate_limit", [(b"retry-after", str(retry_after).encode())],
    )


def unauthenticated(status: int, reason: str, detail: str, www_authenticate: str) -> ApiError:
    """401/403 from the authenticator's short ``reason`` and its ``detail``, the hint on what to fix
    (``serving_hooks.auth.AuthError``: written without the credential, so never echoing it)."""
    header = [(b"www-authenticate", www_authenticate.encode())]
    if status == 403:
        return ApiError(403, f"forbidden: {reason}: {detail}", "permission_error", reason, "forbidden", header)
    return ApiError(
        401, f"authentication failed: {reason}: {detail}", "authentication_error", reason, "auth", header
    )


def auth_throttled(retry_after: int) -> ApiError:
    """429 for a caller (address or key id) whose authentications failed too often."""
    return ApiError(
        429, f"too many failed authentications; retry after {retry_after} s", "rate_limit_error",
        "auth_throttled", "auth_throttled", [(b"retry-after", str(retry_after).encode())],
    )


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404, f"model {model!r} is not served here; GET /v1/models lists the models", "invalid_request_error",
        "model_not_found", "not_found",
    )


def above_bound(param: str, bound: int, setting: str) -> ApiError:
    """400 for a request field above the bound a setting gives (named, so an operator knows what to raise)."""
    return ApiError(
        400, f"{param} must be at most {bound} ({setting})", "invalid_request_error", "integer_above_max_value",
        "bad_request",
    )


def over_context(prompt: int, completions: int, max_tokens: int | None, context: int) -> ApiError:
    asked = f"the prompt (about {prompt} tokens)"
    if max_tokens is not None:
        asked += f" plus {completions} x max_tokens ({completions} x {max_tokens})"
    return ApiError(
        400, f"{asked} exceeds the model's context of {context} tokens (OBSERVATORY_SERVE_CONTEXT_TOKENS); "
             "shorten the prompt or lower max_tokens or n", "invalid_request_error", "context_length_exceeded",
        "bad_request",
    )


def over_budget(worst: int, budget: int) -> ApiError:
    """429 for a request whose worst case is more than the whole tokens-per-minute budget: no wait helps."""
    return ApiError(
        429, f"request too large for tokens per minute: it may use up to {worst} tokens (prompt + n x max_tokens) "
             f"and the budget is {budget}; lower max_tokens or n", "rate_limit_error", "rate_limit_exceeded",
        "rate_limit",
    )


def internal() -> ApiError:
    """A bug of ours: the caller gets a fixed message (no exception text: it may hold request data)."""
    return ApiError(500, "internal error", "server_error",
                    "internal_error")


def not_ready(detail: str) -> ApiError:
    return ApiError(503, f"no model loaded yet: {detail}", "server_error", "model_not_ready")


def upstream_failed(detail: str) -> ApiError:
    return ApiError(502, f"upstream failed: {detail}", "upstream_error", "upstream_error", "upstream")


_REFUSED = {  # upstream 4xx → (type, code, message): a fixed vocabulary, never the upstream's text
    401: ("upstream_error", "upstream_unauthorized", "the upstream refused this gateway's credential"),
    403: ("upstream_error", "upstream_forbidden", "the upstream refused this gateway's credential"),
    404: ("invalid_request_error", "model_not_found", "the upstream does not serve this model or path"),
    408: ("upstream_error", "upstream_timeout", "the upstream timed out reading the request"),
    413: ("invalid_request_error", "request_too_large", "the upstream refused the request as too large"),
    429: ("rate_limit_error", "upstream_rate_limited", "the upstream is rate limiting; retry later"),
}


def upstream_refused(status: int, retry_after: str | None = None) -> ApiError:
    """Our answer to an upstream 4xx: its status, our body (the upstream's may echo what it was sent)."""
    kind, code, message = _REFUSED.get(status, ("invalid_request_error", "upstream_rejected",
                                               "the upstream rejected the request as invalid"))
    headers = [(b"retry-after", retry_after.encode())] if retry_after and retry_after.isdigit() else []
    return ApiError(status, f"{message} (upstream HTTP {status})", kind, code, "upstream", headers)


def upstream_timeout(seconds: float) -> ApiError:
    return ApiError(
        504, f"upstream did not answer within {seconds:g} s", "upstream_error", "upstream_timeout", "upstream"
    )
