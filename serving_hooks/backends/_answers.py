"""Checking an upstream's OpenAI answer (an upstream is not trusted): the fields the gateway reads,
each of the type the API gives it, or :class:`Malformed`."""

from __future__ import annotations

from typing import Any

from gpt_observatory.serving_hooks.inference import GenerationStats

MAX_COUNT = 1 << 31  # a token count above this is not a count


class Malformed(ValueError):
    """The upstream's answer is not a valid OpenAI answer."""


def count_of(usage: dict[str, Any], key: str) -> int | None:
    """``usage[key]`` when it is a non-negative integer count (absent: None); :class:`Malformed` otherwise."""
    value = usage.get(key)
    if value is None:
        return None
    if type(value) is not int or not 0 <= value < MAX_COUNT:
        raise Malformed(f"usage.{key} is not a non-negative integer")
    return value


def cached_of(usage: dict[str, Any], prompt_tokens: int | None) -> int | None:
    """``usage.prompt_tokens_details.cached_tokens`` (vLLM and OpenAI report it) when it is a count within
    the answer's ``prompt_tokens`` (absent: None); :class:`Malformed` otherwise (also when the answer
    gives no prompt tokens to hold it to)."""
    details = usage.get("prompt_tokens_details")
    if details is None:
        return None
    if not isinstance(details, dict):
        raise Malformed("usage.prompt_tokens_details is not an object")
    cached = count_of(details, "cached_tokens")
    if cached is not None and (prompt_tokens is None or cached > prompt_tokens):
        raise Malformed("usage.prompt_tokens_details.cached_tokens is more than the prompt tokens")
    return cached


def text_of(data: dict[str, Any], key: str) -> str | None:
    """``data[key]`` when it is a string or absent/null (None); :class:`Malformed` otherwise."""
    value = data.get(key)
    if value is None or type(value) is str:
        return value
    raise Malformed(f"{key} is not a string")


def choices_of(data: dict[str, Any], *, required: bool) -> list[dict[str, Any]]:
    """``data["choices"]``, a list of objects (non-empty when ``required``); :class:`Malformed` otherwise."""
    choices = data.get("choices")
    if choices is None and not required:
        return []
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices) or (required and not choices):
        raise Malformed("choices is not a list of objects")
    return choices


def check_answer(data: dict[str, Any], chat: bool) -> None:
    """Check that ``data`` is a completion: each choice has a message object (chat) or a text string."""
    for choice in choices_of(data, required=True):
        if chat:
            message = choice.get("message")
            if not isinstance(message, dict):
                raise Malformed("choice without a message object")
            text_of(message, "content")
        elif type(choice.get("text")) is not str:
            raise Malformed("choice without a text string")


def stats_of(data: dict[str, Any], capture: bool, chat: bool = True) -> GenerationStats:
    """The figures of a whole (not streamed) answer; the completion text only when ``capture``."""
    check_answer(data, chat)
    usage = data.get("usage") or {}
    if not isinstance(usage, dict):
        raise Malformed("usage is not an object")
    choices = data["choices"]
    reasons = tuple(r for c in choices if (r := text_of(c, "finish_reason")))
    completion = None
    if capture:
        first = choices[0]
        completion = first["message"].get("content") if chat else first["text"]
    return GenerationStats(
        count_of(usage, "prompt_tokens"), count_of(usage, "completion_tokens"), reasons, text_of(data, "id"),
        text_of(data, "model"), completion,
    )
