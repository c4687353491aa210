"""An asyncio cache of an OIDC issuer's signing keys (discovery + JWKS).

PyJWT's own ``PyJWKClient`` fetches with blocking ``urllib`` and would stall the event loop, so
the fetching and caching live here; parsing and every cryptographic step stay in PyJWT.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections.abc import Callable, Collection
from urllib.parse import urlsplit

import httpx
import jwt
from loguru import logger

DISCOVERY_PATH = "/.well-known/openid-configuration"


def is_loopback_url(url: str) -> bool:
    """True when ``url`` points at this machine (plain HTTP is tolerated only there)."""
    return is_loopback_host(urlsplit(url).hostname or "")


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_secure_url(url: str, what: str) -> None:
    """Refuse a key source that an on-path attacker could replace (anything but HTTPS or loopback)."""
    if urlsplit(url).scheme != "https" and not is_loopback_url(url):
        raise ValueError(f"{what} {url!r} must use https:// (plain http is accepted only on loopback)")


class JwksCache:
    """Signing keys of one issuer, fetched on first use and cached.

    - A known ``kid`` is answered from memory; no request leaves the process.
    - An unknown ``kid`` triggers a refresh (this is how key rotation is picked up), but at most
      one fetch per ``min_refresh_interval`` seconds, however many unknown kids arrive; concurrent
      callers share one fetch.
    - Keys older than ``max_age`` are still served while a background task refreshes them, and
      go on being served while the issuer is unreachable (retried once per ``min_refresh_interval``).
    - A failed fetch keeps the previous keys and is logged; it never raises to the caller.
    """

    def __init__(
        self,
        issuer: str,
        *,
        algorithms: Collection[str],
        max_age: float = 300.0,
        min_refresh_interval: float = 10.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_secure_url(issuer, "OIDC issuer")
        self.issuer = issuer
        self._algorithms = frozenset(algorithms)
        self._max_age = max_age
        self._min_interval = min_refresh_interval
        self._timeout = timeout
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._jwks_uri: str | None = None
        self._fetched_at = -math.inf  # last successful fetch
        self._attempted_at = -math.inf  # last attempt, successful or not (the rate limit)
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._background: asyncio.Task[None] | None = None
        self.attempts = 0  # refreshes tried (for tests and the benchmark)
        self.fetches = 0  # JWKS documents received

    @property
    def kids(self) -> frozenset[str]:
        """Key ids currently cached."""
        return frozenset(self._keys)

    def has(self, kid: str) -> bool:
        """Whether ``kid`` is cached (no fetch)."""
        return kid in self._keys

    async def get(self, kid: str) -> jwt.PyJWK | None:
        """The verification key for ``kid``, or None when the issuer does not publish it."""
        key = self._keys.get(kid)
        if key is not None:
            self.touch()
            return key
        if self._clock() - self._attempted_at < self._min_interval:
            return None
        await self.refresh()
        return self._keys.get(kid)

    def touch(self) -> None:
        """Start a background refresh if the keys are stale (and the rate limit allows); never waits."""
        now = self._clock()
        if (
            now - self._fetched_at > self._max_age
            and now - self._attempted_at >= self._min_interval
            and self._background is None
        ):
            self._background = asyncio.get_running_loop().create_task(self._refresh_in_background())

    async def refresh(self) -> bool:
        """Fetch the key set now unless another caller just did; True when keys are available."""
        seen = self._attempted_at
        async with self._loop_lock():
            if self._attempted_at != seen:  # someone else fetched while we waited
                return bool(self._keys)
            self._attempted_at = self._clock()
            self.attempts += 1
            try:
                keys = await self._fetch()
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                self._jwks_uri = None  # rediscover next time: the jwks_uri may have moved
                logger.warning("JWKS refresh from {} failed ({}); keeping {} cached keys",
                               self.issuer, exc, len(self._keys))
                return bool(self._keys)
            if set(keys) != set(self._keys):
                logger.info("JWKS of {} now has key ids {}", self.issuer, sorted(keys))
            self._keys = keys
            self._fetched_at = self._clock()
            return True

    async def aclose(self) -> None:
        """Cancel a background refresh, if one runs."""
        if self._background is not None:
            self._background.cancel()
            self._background = None

    async def _refresh_in_background(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # the boundary of a task nobody awaits: log rather than lose it
            logger.error("background JWKS refresh from {} failed: {!r}", self.issuer, exc)
        finally:
            self._background = None

    def _loop_lock(self) -> asyncio.Lock:
        # An asyncio.Lock belongs to one event loop; tests and CLIs may drive us from several.
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def _fetch(self) -> dict[str, jwt.PyJWK]:
        async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as client:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover(client)
            response = await client.get(self._jwks_uri, headers={"Accept": "application/json"})
            response.raise_for_status()
            self.fetches += 1
            document = response.json()
        if not isinstance(document, dict):
            raise ValueError("JWKS is not a JSON object")
        jwk_set = jwt.PyJWKSet.from_dict(document)
        keys: dict[str, jwt.PyJWK] = {}
        for key in jwk_set.keys:
            # Only signature keys for an allowed algorithm; symmetric ("oct") keys never qualify.
            if key.key_id and key.public_key_use in (None, "sig") and key.algorithm_name in self._algorithms:
                keys.setdefault(key.key_id, key)
        if not keys:
            raise ValueError(f"no usable signing key (algorithms {sorted(self._algorithms)})")
        return keys

    async def _discover(self, client: httpx.AsyncClient) -> str:
        response = await client.get(self.issuer.rstrip("/") + DISCOVERY_PATH)
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict):
            raise ValueError("discovery document is not a JSON object")
        # OpenID Connect Discovery 1.0 §4.3: the document must name exactly the issuer we asked.
        if document.get("issuer") != self.issuer:
            raise ValueError(f"discovery document names issuer {document.get('issuer')!r}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise ValueError("discovery document has no jwks_uri")
        check_secure_url(jwks_uri, "jwks_uri")
        return jwks_uri
