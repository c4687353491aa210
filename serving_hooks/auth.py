"""Verify the credential of a request: an OIDC bearer JWT or an Observatory API key.

``Authenticator.authenticate`` turns an ``Authorization`` header into a :class:`Principal` or
raises :class:`AuthError` (401 with a short reason, 403 for a missing scope). It never echoes
the credential, and records the span ``auth.verify``, an attempts counter and a duration
histogram, by method and outcome. The subject appears only as a salted hash.

JWTs: PyJWT does the verification and all cryptography; the header is only peeked at to choose
a key. The algorithm allow-list (RS256, ES256, EdDSA) is checked before any key is looked up, so
``none`` and HS* tokens (including HS256 signed with the public key as the HMAC secret) never
reach a verifier; keys come only from the issuer's JWKS (header ``jwk``/``jku``/``x5u`` are
ignored). A verified token is remembered by its SHA-256 until it expires (or its key leaves the
JWKS), so a client reusing its token costs a dictionary lookup, not a signature check. The tenant is read from one configured claim
(``tenant`` by default, dotted paths allowed); a token without it is refused rather than
falling back to the client id, so a forgotten claim cannot make a client its own tenant.
Set ``OBSERVATORY_AUTH_TENANT_CLAIM=azp`` to make each OAuth client a tenant on purpose.
Verified claims are type-checked as well: ``exp``/``nbf``/``iat`` are integer dates between 1970 and
year 9999 (numeric strings, booleans, fractions and 400-digit numbers are ``malformed``), ``sub`` is a
non-empty string and the tenant a name an API key could carry too.

Failed authentications are throttled (:mod:`serving_hooks._throttle`): after
``throttle_failures`` 401s in a row from one client address, or naming one API key id, that
address or key id is answered 429 with ``Retry-After`` for a growing, capped wait, before anything
is verified (counted in ``observatory.auth.throttled``). A JWT's ``kid`` and ``sub`` are not keys:
the ``kid`` names the issuer's key that every user shares, and neither is trustworthy before the
signature verifies, so refusing by them would let anyone lock others out; JWTs count per address.
The counts live in each worker process and are bounded (``throttle_max_keys`` per kind).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from loguru import logger
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gpt_observatory.serving_hooks._auth_settings import (
    ALLOWED_ALGORITHMS,
    DEFAULT_SUBJECT_SALT,
    ENV_PREFIX,
    AuthSettings,
)
from gpt_observatory.serving_hooks._jwks import JwksCache, is_loopback_url
from gpt_observatory.serving_hooks._throttle import FailureThrottle
from gpt_observatory.serving_hooks.apikeys import (
    TENANT_NAME,
    ApiKeyError,
    ApiKeyStore,
    key_id_of,
    looks_like_api_key,
)
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.summed import SummedCounter

__all__ = ["ALLOWED_ALGORITHMS", "AuthError", "AuthSettings", "Authenticator", "Principal"]

Method = Literal["jwt", "api_key", "none"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made an authenticated request."""

    tenant: str
    subject_hash: str
    method: Literal["jwt", "api_key"]
    scopes: frozenset[str]


class AuthError(Exception):
    """A refused credential: ``status`` 401, 403 or 429 (throttled), ``reason`` one of
    ``names.AUTH_OUTCOMES``, ``detail`` what to fix. The gateway sends ``reason`` and ``detail`` to the
    caller in the error body, so ``detail`` is written from fixed text and settings, never from the credential."""

    def __init__(
        self, status: int, reason: str, method: Method, detail: str, *,
        tenant: str | None = None, required_scopes: frozenset[str] = frozenset(), retry_after: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.method = method
        self.detail = detail
        self.tenant = tenant  # known only for 403 (the credential itself was valid)
        self.required_scopes = required_scopes
        self.retry_after = retry_after  # seconds, for status 429 (failed-auth throttling)

    @property
    def www_authenticate(self) -> str:
        """The RFC 6750 ``WWW-Authenticate`` header value for this refusal."""
        if self.reason == "missing":
            return 'Bearer realm="observatory"'
        if self.status == 403:
            scope = " ".join(sorted(self.required_scopes))
            return f'Bearer realm="observatory", error="insufficient_scope", scope="{scope}"'
        return f'Bearer realm="observatory", error="invalid_token", error_description="{self.reason}"'


# PyJWT's exceptions mapped to outcomes; subclasses before their bases.
_JWT_ERRORS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "token has expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "token is not valid yet (nbf/iat in the future)"),
    (jwt.InvalidIssuerError, "wrong_issuer", "token was issued by another issuer"),
    (jwt.InvalidAudienceError, "wrong_audience", "token is meant for another audience"),
    (jwt.InvalidSignatureError, "bad_signature", "token signature does not verify"),
    (jwt.InvalidAlgorithmError, "bad_signature", "token algorithm does not match the signing key"),
)
_REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]
# JWS compact serialization; an unsigned (alg "none") token has an empty third segment.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MISSING_CLAIM_OUTCOME = {"iss": "wrong_issuer", "aud": "wrong_audience"}
_DATE_CLAIMS = ("exp", "nbf", "iat")
_LATEST_DATE = 253_402_300_799  # 9999-12-31T23:59:59Z; later "dates" (a 400-digit exp) are not dates


class Authenticator:
    """Verifies ``Authorization`` headers; build once per app from :class:`AuthSettings`."""

    def __init__(
        self,
        settings: AuthSettings | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.settings = s = settings if settings is not None else AuthSettings.load()
        self.jwks: JwksCache | None = None
        if s.issuer:
            self.jwks = JwksCache(
                s.issuer, algorithms=s.algorithms, max_age=s.jwks_refresh_interval_s,
                min_refresh_interval=s.jwks_min_refresh_interval_s, timeout=s.http_timeout_s,
            )
        self.api_keys = ApiKeyStore(s.api_keys_file) if s.api_keys_file else None
        self._algorithms = frozenset(s.algorithms)
        self._algorithm_list = list(s.algorithms)
        self._accepted = ", ".join(s.algorithms)
        salt = s.subject_salt.get_secret_value()
        if salt == DEFAULT_SUBJECT_SALT and s.issuer and not is_loopback_url(s.issuer):
            logger.warning("subject hashes use the default salt; set {}SUBJECT_SALT to a secret", ENV_PREFIX)
        self._hmac = hmac.new(salt.encode(), digestmod=hashlib.sha256)
        self._subject_hashes: dict[str, str] = {}
        # Verified JWTs by SHA-256 of the token -> (principal, exp, kid). Clients reuse a token for
        # minutes, and re-verifying costs far more than the lookup; the token itself is not kept.
        self._verified: dict[bytes, tuple[Principal, float, str]] = {}
        self._claim_path = tuple(s.tenant_claim.split("."))
        self._model_scopes = {model: frozenset(scopes) for model, scopes in s.model_scopes.items()}
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        meter = metrics.get_meter(__name__, meter_provider=meter_provider)
        self._attempts = SummedCounter.of(__name__, names.AUTH_ATTEMPTS, provider=meter_provider)
        self._duration = meter.create_histogram(
            names.AUTH_DURATION.name, unit=names.AUTH_DURATION.unit, description=names.AUTH_DURATION.description,
            explicit_bucket_boundaries_advisory=names.AUTH_DURATION_BUCKETS,
        )
        self._labels = {
            (m, o): {names.AUTH_METHOD: m, names.AUTH_OUTCOME: o}
            for m in names.AUTH_METHODS for o in names.AUTH_OUTCOMES
        }
        throttles = {
            kind: FailureThrottle(
                s.throttle_failures, s.throttle_window_s, s.throttle_max_backoff_s, s.throttle_max_keys
            )
            for kind in s.throttle_by
        }
        self.by_address = throttles.get("address")
        self.by_key_id = throttles.get("key_id")
        self._throttled = SummedCounter.of(__name__, names.AUTH_THROTTLED, provider=meter_provider)
        self._throttle_labels = {k: {names.AUTH_THROTTLE_KEY: k} for k in names.AUTH_THROTTLE_KEYS}

    def scopes_for(self, model: str | None) -> frozenset[str]:
        """Scopes a request for ``model`` needs: its entry in ``model_scopes``, else the ``*`` entry."""
        scopes = self._model_scopes.get(model or "")
        return scopes if scopes is not None else self._model_scopes.get("*", frozenset())

    async def warm_up(self) -> bool:
        """Fetch the issuer's keys now (e.g. at startup); False when they could not be fetched."""
        return True if self.jwks is None else await self.jwks.refresh()

    async def aclose(self) -> None:
        if self.jwks is not None:
            await self.jwks.aclose()

    async def authenticate(
        self, authorization: str | None, required_scopes: Iterable[str] = (), client: str | None = None
    ) -> Principal:
        """The principal behind ``authorization``; raises :class:`AuthError` when refused. ``client`` is
        the caller's address (failed-auth throttling)."""
        start = time.perf_counter()
        # Not made current: nothing runs beneath it, and attaching a context costs more than the span.
        span = self._tracer.start_span(names.SPAN_AUTH_VERIFY, kind=SpanKind.INTERNAL)
        try:
            required = frozenset((required_scopes,) if isinstance(required_scopes, str) else required_scopes)
            principal = await self._verify(authorization, required, client)
        except AuthError as err:
            self._record(span, err.method, err.reason, start, err.tenant, None)
            if err.status == 401 and client is not None and self.by_address is not None:
                self.by_address.failed(client)
            raise
        except BaseException as exc:  # a bug or a cancellation: fail closed, name only the type
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        else:
            self._record(span, principal.method, "ok", start, principal.tenant, principal.subject_hash)
            return principal
        finally:
            span.end()

    def subject_hash(self, method: str, subject: str) -> str:
        """Stable, salted, non-reversible id of a subject (16 hex digits of HMAC-SHA256)."""
        name = f"{method}:{subject}"
        known = self._subject_hashes.get(name)
        if known is None:
            mac = self._hmac.copy()
            mac.update(name.encode())
            known = mac.hexdigest()[:16]
            if len(self._subject_hashes) >= 10_000:
                self._subject_hashes.clear()
            self._subject_hashes[name] = known
        return known

    # ------------------------------------------------------------------ internals
    def _record(self, span: trace.Span, method: str, outcome: str, start: float,
                tenant: str | None, subject_hash: str | None) -> None:
        labels = self._labels[(method, outcome)]
        self._attempts.add(1, labels)
        self._duration.record(time.perf_counter() - start, labels)
        if span.is_recording():
            span.set_attributes(labels)
            if tenant is not None:
                span.set_attribute(names.TENANT, tenant)
            if subject_hash is not None:
                span.set_attribute(names.AUTH_SUBJECT_HASH, subject_hash)
            if outcome != "ok":
                span.set_status(Status(StatusCode.ERROR, outcome))

    def _check_throttle(self, throttle: FailureThrottle, kind: str, key: str | None, method: Method) -> None:
        wait = throttle.retry_after(key) if key is not None else None
        if wait is not None:
            self._throttled.add(1, self._throttle_labels[kind])
            raise AuthError(429, "throttled", method, f"too many failed authentications by this {kind}",
                            retry_after=wait)

    async def _verify(self, authorization: str | None, required: frozenset[str], client: str | None) -> Principal:
        if not authorization:
            raise AuthError(401, "missing", "none", "no credential; send 'Authorization: Bearer <token or API key>'")
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError(401, "malformed", "none", "use the Bearer scheme: 'Authorization: Bearer <credential>'")
        credential = credential.strip()
        if not credential:
            raise AuthError(401, "malformed", "none", "empty bearer credential")
        method: Method = "api_key" if looks_like_api_key(credential) else "jwt"
        if self.by_address:  # something failed lately (an empty tracker is the common, free case)
            self._check_throttle(self.by_address, "address", client, method)
        if len(credential) > self.settings.max_token_length:
            raise AuthError(401, "malformed", method, f"credential longer than {self.settings.max_token_length} bytes")
        if method == "api_key":
            return self._verify_api_key(credential, required)
        return await self._verify_jwt(credential, required)

    def _verify_api_key(self, key: str, required: frozenset[str]) -> Principal:
        if self.by_key_id:
            self._check_throttle(self.by_key_id, "key_id", key_id_of(key), "api_key")
        if self.api_keys is None:
            raise AuthError(401, "unknown_key", "api_key", "this gateway accepts no API keys")
        try:
            record = self.api_keys.verify(key)
        except ApiKeyError as err:
            # Any presented id, known or not: which ids answer 429 must not tell which exist.
            if self.by_key_id is not None and (key_id := key_id_of(key)) is not None:
                self.by_key_id.failed(key_id)
            raise AuthError(401, err.reason, "api_key", err.detail) from None
        principal = Principal(record.tenant, self.subject_hash("api_key", record.key_id), "api_key",
                              frozenset(record.scopes))
        return self._authorize(principal, required)

    async def _verify_jwt(self, token: str, required: frozenset[str]) -> Principal:
        if self.jwks is None:
            raise AuthError(401, "unknown_key", "jwt", "this gateway accepts no JWTs (no OIDC issuer configured)")
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._verified.get(digest)
        if hit is not None:
            principal, exp, kid = hit
            if exp > time.time() - self.settings.leeway_s and self.jwks.has(kid):
                self.jwks.touch()  # keeps the JWKS fresh, so a key the issuer withdraws stops verifying
                return self._authorize(principal, required)
            del self._verified[digest]  # expired, or its key left the JWKS: verify afresh (and fail)
        header = _peek_header(token)
        if header is None:
            raise AuthError(401, "malformed", "jwt", "credential is neither a JWT nor an API key")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:  # none, HS*...: refused before any key lookup
            raise AuthError(401, "bad_signature", "jwt", f"token algorithm not allowed; accepted: {self._accepted}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError(401, "unknown_key", "jwt", "token has no kid header naming its signing key")
        key = await self.jwks.get(kid)
        if key is None:
            raise AuthError(401, "unknown_key", "jwt", "token is not signed by a key the issuer publishes")
        try:
            claims = jwt.decode(
                token, key, algorithms=self._algorithm_list, audience=self.settings.audience,
                issuer=self.settings.issuer, leeway=self.settings.leeway_s, options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.MissingRequiredClaimError as err:
            outcome = _MISSING_CLAIM_OUTCOME.get(err.claim, "malformed")
            raise AuthError(401, outcome, "jwt", f"token has no '{err.claim}' claim") from None
        except jwt.PyJWTError as err:
            outcome, detail = next(
                ((o, d) for kind, o, d in _JWT_ERRORS if isinstance(err, kind)), ("malformed", "token is invalid")
            )
            raise AuthError(401, outcome, "jwt", detail) from None
        problem = _claims_problem(claims)
        if problem is not None:
            raise AuthError(401, "malformed", "jwt", problem)
        tenant = _claim(claims, self._claim_path)
        if not isinstance(tenant, str) or not tenant:
            raise AuthError(401, "malformed", "jwt", f"token has no tenant claim '{self.settings.tenant_claim}'")
        if TENANT_NAME.fullmatch(tenant) is None:
            raise AuthError(401, "malformed", "jwt", f"token claim '{self.settings.tenant_claim}' must be 1-64 "
                            "letters, digits, '.', '_' or '-'")
        principal = Principal(tenant, self.subject_hash("jwt", claims["sub"]), "jwt", _scopes(claims))
        if self.settings.jwt_cache_size:
            if len(self._verified) >= self.settings.jwt_cache_size:
                del self._verified[next(iter(self._verified))]  # the oldest entry
            self._verified[digest] = (principal, float(claims["exp"]), kid)
        return self._authorize(principal, required)

    @staticmethod
    def _authorize(principal: Principal, required: frozenset[str]) -> Principal:
        if not required <= principal.scopes:
            missing = " ".join(sorted(required - principal.scopes))
            raise AuthError(403, "insufficient_scope", principal.method, f"credential lacks scope(s): {missing}",
                            tenant=principal.tenant, required_scopes=required)
        return principal


def _peek_header(token: str) -> dict[str, Any] | None:
    """The JOSE header, read only to choose a key: PyJWT parses and checks the whole token again."""
    if _COMPACT_JWS.fullmatch(token) is None:
        return None
    segment = token[: token.index(".")]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error, RecursionError):  # RecursionError: '[[[[...' nested thousands deep
        return None
    return header if isinstance(header, dict) else None


def _claims_problem(claims: Mapping[str, Any]) -> str | None:
    """What is wrong with the types of verified claims, or None. PyJWT reads dates with ``int()``, so
    it takes ``"2000000000"`` and ``true``, and a date past ``float``'s range breaks code after it."""
    for name in _DATE_CLAIMS:
        if name in claims and not _is_date(claims[name]):
            return f"token claim '{name}' must be an integer date (seconds since 1970, before year 10000)"
    sub = claims["sub"]  # present: PyJWT requires it
    if not isinstance(sub, str) or not sub.strip():
        return "token claim 'sub' must be a non-empty string"
    return None


def _is_date(value: Any) -> bool:
    """An integer date: an int (not a bool), or a float with an integral value (some JSON encoders
    write 1700000000.0). RFC 7519 allows fractions; no mainstream IdP sends them, and PyJWT truncates them."""
    if type(value) is float:
        return value.is_integer() and 0 <= value <= _LATEST_DATE
    return type(value) is int and 0 <= value <= _LATEST_DATE


def _claim(claims: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = claims
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """OAuth ``scope`` (space-separated, RFC 8693) or ``scp`` (a list, as Okta and Entra ID send)."""
    raw = claims.get("scope", claims.get("scp"))
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list):
        return frozenset(s for s in raw if isinstance(s, str))
    return frozenset()
