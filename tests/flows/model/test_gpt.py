"""The reference model's byte tokenizer."""

from __future__ import annotations

from gpt_observatory.flows.model.gpt import ByteTokenizer


def test_tokens_are_utf8_bytes() -> None:
    tok = ByteTokenizer()
    assert tok.encode("café") == list("café".encode())
    assert len(tok.encode("café")) == 5
    assert tok.decode(tok.encode("naïve ☃")) == "naïve ☃"
