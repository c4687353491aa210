"""Helpers of the catalog tests: API keys with and without the ``research`` scope, one chat call."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import httpx


class ScopedKeys(NamedTuple):
    path: Path  # the API-key file
    plain: str  # tenant acme: scope inference
    lab: str  # tenant lab: scopes inference and research


def scoped_keys(tmp_path_factory) -> ScopedKeys:
    """A key file in a fresh folder with one key of each kind (for a module-scoped fixture)."""
    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore

    path = tmp_path_factory.mktemp("catalog-keys") / "keys.json"
    store = ApiKeyStore(path)
    plain, _ = store.create("acme", ["inference"])
    lab, _ = store.create("lab", ["inference", "research"])
    return ScopedKeys(path, plain, lab)


def chat(gw: Any, key: str, model: str, **extra: Any) -> httpx.Response:
    """One chat completion with ``key``; ``extra``: more body fields."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(gw.v1 + "/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=10)
