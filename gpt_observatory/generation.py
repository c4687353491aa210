"""Generation defaults and bounds shared by the reference model (``flows``) and the gateway
(``serving_hooks``): a request that names no ``max_tokens`` or ``temperature`` gets the same
values whether the gateway fills them in or the model does, and neither side accepts more
than ``MAX_TOKENS_LIMIT`` new tokens."""

from __future__ import annotations

from typing import Final

DEFAULT_MAX_TOKENS: Final = 32
DEFAULT_TEMPERATURE: Final = 0.8
MAX_TOKENS_LIMIT: Final = 4096
