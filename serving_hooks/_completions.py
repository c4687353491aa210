"""``POST /v1/chat/completions`` and ``POST /v1/completions``, served as plain ASGI in front of FastAPI.

These two endpoints carry all the traffic. Behind the gateway, FastAPI's request machinery only
repeated work: it read the body again, parsed its JSON again with the standard library, solved
dependencies and opened two exit stacks per request. That came to about a quarter of a proxied
request's CPU time (py-spy, ``bench/gateway.py``). Here the body and its JSON come from the
gateway's :class:`~serving_hooks.context.RequestContext` when it is there, and so does the request
itself: the gateway validated it with the same pydantic models before reading any field (a
validation error is the same OpenAI-style 400 either way), so it is not validated twice. :func:`document` writes
the two operations into FastAPI's OpenAPI document from those models, so the document, the docs UI
and schemathesis see what they saw before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic.json_schema import models_json_schema
from starlette.types import Receive, Scope, Send

from gpt_observatory.serving_hooks import _errors
from gpt_observatory.serving_hooks._errors import ApiError
from gpt_observatory.serving_hooks._openai import REQUEST_MODELS, ChatCompletionRequest, CompletionRequest, validate
from gpt_observatory.serving_hooks.backends.base import Call, ModelRouter
from gpt_observatory.serving_hooks.context import request_context
from gpt_observatory.serving_hooks.gateway import ClientGone, parse_object, read_body
from gpt_observatory.telemetry import names

if TYPE_CHECKING:
    from fastapi import FastAPI

# path: (GenAI operation, request model, OpenAPI operationId, summary)
OPERATIONS: dict[str, tuple[str, type[ChatCompletionRequest] | type[CompletionRequest], str, str]] = {
    "/v1/chat/completions": (names.GEN_AI_OPERATION_CHAT, REQUEST_MODELS["/v1/chat/completions"],
                             "create_chat_completion", "Create a chat completion"),
    "/v1/completions": (names.GEN_AI_OPERATION_TEXT_COMPLETION, REQUEST_MODELS["/v1/completions"],
                        "create_completion", "Create a text completion"),
}


class CompletionsEndpoint:
    """Pure ASGI: the two completion operations here, every other request to ``app`` (FastAPI)."""

    def __init__(self, app: FastAPI, router: ModelRouter) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = OPERATIONS.get(scope["path"]) if scope["type"] == "http" else None
        if target is None:
            await self.app(scope, receive, send)
            return
        ctx = request_context(scope)
        try:
            if scope["method"] != "POST":
                raise _errors.method_not_allowed(scope["method"], "POST")
            operation, model, _, _ = target
            if ctx is not None and ctx.request is not None:  # read, parsed, validated and bounded by the gateway
                raw, request = ctx.body, ctx.request
            else:  # no gateway in front: no size limit of ours, as FastAPI read it
                raw = await read_body(receive)
                request = validate(model, parse_object(raw))
            call = Call(operation, request, raw, ctx)
            response = await self.router.select(call).handle(call)
        except ApiError as error:
            if ctx is not None and error.reason is not None:
                ctx.rejection = error.reason
            await error.send(send)
            return
        except ClientGone:  # went away mid-body: nobody to answer
            return
        await response(scope, receive, send)

    def openapi(self) -> dict[str, Any]:
        """The app's OpenAPI document (FastAPI's, with the two operations added)."""
        return self.app.openapi()


def document(schema: dict[str, Any], responses: dict[str, Any]) -> None:
    """Add the two operations to an OpenAPI document FastAPI generated (``responses``: by status)."""
    definitions, top = models_json_schema(
        [(model, "validation") for _, model, _, _ in OPERATIONS.values()], ref_template="#/components/schemas/{model}"
    )
    schema.setdefault("components", {}).setdefault("schemas", {}).update(top.get("$defs", {}))
    for path, (_, model, operation_id, summary) in OPERATIONS.items():
        body_schema = definitions[(model, "validation")]
        schema["paths"][path] = {"post": {
            "summary": summary,
            "description": f"{summary} (OpenAI-compatible).",
            "operationId": operation_id,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}},
            "responses": responses,
        }}

