"""The OpenAI wire format the reference app speaks: request models (validation + OpenAPI) and
builders for responses, stream chunks and SSE frames."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpt_observatory.serving_hooks import _errors

# The widest bound a setting may give (ServeSettings.max_tokens_limit); the gateway holds each request
# to the configured one and says which setting it is.
_TOKENS_CEILING = 1 << 20


class StreamOptions(BaseModel):
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"] = "text"
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields pass through to an upstream
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=_TOKENS_CEILING)
    # Declared so that they are validated (an integer >= 1); the gateway bounds them by settings.
    n: int | None = Field(None, ge=1)
    best_of: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def completions(self) -> int:
        """Completions generated (and billed) for this request: ``best_of`` when larger than ``n``."""
        return max(self.n or 1, self.best_of or 1)

    def limit(self) -> int | None:
        """The caller's bound on new tokens per completion (``None``: the model's default)."""
        return self.max_tokens


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1, le=_TOKENS_CEILING)

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Common):
    prompt: str | list[str] = Field(max_length=1 << 20)


OpenAIRequest = ChatCompletionRequest | CompletionRequest
# The request model of each completion route: the gateway validates a body with it before reading
# any field, and the endpoint reuses what the gateway validated.
REQUEST_MODELS: dict[str, type[ChatCompletionRequest] | type[CompletionRequest]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}


def validate(model: type[OpenAIRequest], data: Any) -> OpenAIRequest:
    """``data`` as a ``model``; an OpenAI-style 400 naming the first field at fault when it is not one."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _errors.invalid_request(e.errors(include_url=False)) from None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "observatory"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def message_text(content: str | list[TextPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content)


def chat_prompt(messages: list[ChatMessage]) -> str:
    """The plain-text prompt a completion model sees for a chat (one ``role: text`` line each)."""
    lines = [f"{m.role}: {message_text(m.content)}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


def completion_prompt(prompt: str | list[str]) -> str:
    return prompt if isinstance(prompt, str) else "".join(prompt)


def new_id(operation: str) -> str:
    return ("chatcmpl-" if operation == "chat" else "cmpl-") + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response_body(
    operation: str, rid: str, model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> bytes:
    """A complete ``chat.completion`` or ``text_completion`` object."""
    if operation == "chat":
        choice: dict[str, Any] = {
            "index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
            "logprobs": None,
        }
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        kind = "text_completion"
    return orjson.dumps({
        "id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": [choice],
        "usage": usage(prompt_tokens, completion_tokens),
    })


class ChunkWriter:
    """SSE frames for one streamed completion (chat or text)."""

    __slots__ = ("_chat", "_created", "_head", "model", "rid")

    def __init__(self, operation: str, rid: str, model: str) -> None:
        self._chat = operation == "chat"
        self.rid = rid
        self.model = model
        self._created = int(time.time())
        kind = "chat.completion.chunk" if self._chat else "text_completion"
        # Everything before "choices" is the same in every chunk: encode it once.
        self._head = orjson.dumps({"id": rid, "object": kind, "created": self._created, "model": model})[:-1]

    def _frame(self, choices: bytes, tail: bytes = b"") -> bytes:
        return b"data: " + self._head + b',"choices":' + choices + tail + b"}\n\n"

    def role(self) -> bytes:
        """The first chat chunk (announces the assistant role); empty for text completions."""
        if not self._chat:
            return b""
        return self._frame(b'[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]')

    def text(self, piece: str) -> bytes:
        field = b'"delta":{"content":' if self._chat else b'"text":'
        close = b"}" if self._chat else b""
        return self._frame(b'[{"index":0,' + field + orjson.dumps(piece) + close + b',"finish_reason":null}]')

    def finish(self, reason: str) -> bytes:
        body = b'"delta":{}' if self._chat else b'"text":""'
        return self._frame(b'[{"index":0,' + body + b',"finish_reason":' + orjson.dumps(reason) + b"}]")

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return self._frame(b"[]", b',"usage":' + orjson.dumps(usage(prompt_tokens, completion_tokens)))

    @staticmethod
    def error(message: str, code: str) -> bytes:
        return b"data: " + orjson.dumps({"error": {"message": message, "type": "server_error", "code": code}}) + b"\n\n"

    DONE = b"data: [DONE]\n\n"
