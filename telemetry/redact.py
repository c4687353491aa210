"""The one place credentials are removed from telemetry before it leaves the process.

Two rules: an attribute or log field whose *key* names a credential (authorization, cookie,
api key, token, secret, password, ...) is replaced whole; any *value* holding a bearer string,
a JWT-shaped string, an API key of a known shape or the ``user:password`` of a URL is masked in
place. Keys such as ``gen_ai.token.type`` or ``gen_ai.usage.input_tokens`` describe token *counts*
and are kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "[REDACTED]"

_KEY_WORDS = (
    r"authorization|proxy[-_]?authorization|cookie|set[-_]?cookie|api[-_]?key|x[-_]api[-_]key|apikey"
    r"|token|access[-_]?token|refresh[-_]?token|id[-_]?token|bearer|secret|client[-_]?secret"
    r"|password|passwd|credentials?|private[-_]?key"
)
# The last dotted segment of the key must be one of the words (optionally prefixed, e.g. http.request.header.x-api-key).
_SECRET_KEY = re.compile(rf"(?:^|[._-])(?:{_KEY_WORDS})$", re.IGNORECASE)

_SECRET_VALUE = re.compile(
    r"(?i:\bbearer\s+)[A-Za-z0-9._~+/=-]+"  # Authorization: Bearer <anything>
    r"|(?i:\bbasic\s+)[A-Za-z0-9+/=]{8,}"  # Authorization: Basic <base64>
    r"|\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"  # JWT (header starts with '{"')
    r"|\bobs_[A-Za-z0-9_-]{16,}"  # Observatory API keys
    r"|\bsk-[A-Za-z0-9_-]{16,}"  # OpenAI-style keys
    r"|(?<=://)[^/?#@\s]+(?=@)"  # the user:password of a URL (scheme://[REDACTED]@host)
)


_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]*)@")


def without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` removed (``postgresql://u:pw@db/x`` → ``postgresql://db/x``)."""
    return _URL_USERINFO.sub(r"\g<scheme>", url)


_SCALARS = frozenset({int, float, bool})


class Redactor:
    """Masks credentials in attribute mappings and strings."""

    def __init__(self, extra_keys: Iterable[str] = ()):
        extra = [re.escape(k) for k in extra_keys]
        self._key = (
            re.compile(rf"{_SECRET_KEY.pattern}|(?:^|[._-])(?:{'|'.join(extra)})$", re.IGNORECASE)
            if extra
            else _SECRET_KEY
        )

        self._key_cache: dict[str, bool] = {}
        # Attribute values repeat (routes, methods, model and tenant names): remember short ones.
        self._text_cache: dict[str, str] = {}

    def is_secret_key(self, key: str) -> bool:
        hit = self._key_cache.get(key)
        if hit is None:
            if len(self._key_cache) > 10_000:  # attribute keys are few; bound it anyway
                self._key_cache.clear()
            hit = self._key_cache[key] = bool(self._key.search(key))
        return hit

    def text(self, value: str) -> str:
        """``value`` with every credential-shaped substring masked."""
        return _SECRET_VALUE.sub(MASK, value)

    def attributes(self, attrs: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """A masked copy of ``attrs``, or ``attrs`` itself when nothing needed masking."""
        if not attrs:
            return attrs
        changed: dict[str, Any] | None = None
        # The SDK's BoundedAttributes wraps a plain dict; iterating that skips its lock and copy.
        plain = getattr(attrs, "_dict", attrs)
        for key, value in plain.items():
            new = self._value(key, value)
            if new is not value:
                if changed is None:
                    changed = dict(plain)
                changed[key] = new
        return attrs if changed is None else changed

    def metrics_data(self, data: Any) -> Any:
        """Mask data-point attributes of an OTel ``MetricsData`` in place; return it."""
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points:
                        masked = self.attributes(p.attributes)
                        if masked is not p.attributes:
                            object.__setattr__(p, "attributes", masked)  # frozen dataclass, exported copy
        return data

    def _value(self, key: str, value: Any) -> Any:
        if self.is_secret_key(key):
            return MASK
        if type(value) in _SCALARS:
            return value
        if isinstance(value, str):
            masked = self._text_cache.get(value)
            if masked is None:
                masked = _SECRET_VALUE.sub(MASK, value)
                if len(value) <= 128:
                    if len(self._text_cache) >= 4096:
                        self._text_cache.clear()
                    self._text_cache[value] = masked
            return value if masked == value else masked
        if isinstance(value, (tuple, list)) and value and isinstance(value[0], str):
            masked_seq = [_SECRET_VALUE.sub(MASK, v) if isinstance(v, str) else v for v in value]
            return value if masked_seq == list(value) else type(value)(masked_seq)
        if isinstance(value, Mapping):
            return self.attributes(value)
        return value


DEFAULT = Redactor()
