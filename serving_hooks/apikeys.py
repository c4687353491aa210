"""API keys for services: ``obs_<key id>_<secret>``, kept only as SHA-256 hashes in a JSON file.

The file is the source of truth and may be edited while gateways run: :meth:`ApiKeyStore.verify`
stats it at most every ``recheck_interval_s`` (0.5 s) and re-reads it when it changed, so a
revocation takes effect within that interval, without a restart. Writers (``observatory keys``) replace it
atomically under a lock file.

A plain SHA-256 is the right hash here: the secret is 256 bits from :func:`secrets.token_urlsafe`,
so a leaked file cannot be brute-forced, and a slow password hash (bcrypt, argon2) would only add
milliseconds to every request. Passwords, being guessable, would need the slow hash; these do not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from loguru import logger

KEY_PREFIX = "obs_"
FILE_VERSION = 1
_KEY = re.compile(r"obs_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
# What a tenant name may be, whichever credential carries it: it becomes a metric label, a rate-limit key
# and a log field, so 1-64 letters, digits, '.', '_' or '-'.
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SCOPE = re.compile(r"[!#-\[\]-~]+")  # RFC 6749 §3.3 scope-token
# Compared against when the key id is unknown, so a miss costs the same as a wrong secret.
_DUMMY_HASH = "sha256:" + "0" * 64

ApiKeyReason = Literal["malformed", "unknown_key", "revoked"]


class ApiKeyError(Exception):
    """A presented API key was not accepted; ``reason`` is an auth outcome name."""

    def __init__(self, reason: ApiKeyReason, detail: str) -> None:
        super().__init__(detail)
        self.reason: ApiKeyReason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """One stored key. ``key_hash`` is ``sha256:<hex>`` of the whole key string."""

    key_id: str
    tenant: str
    key_hash: str
    scopes: tuple[str, ...] = ()
    created: str = ""
    revoked: bool = False
    revoked_at: str | None = None
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "scopes": list(self.scopes)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ApiKeyRecord:
        record = cls(
            key_id=str(data["key_id"]),
            tenant=str(data["tenant"]),
            key_hash=str(data["key_hash"]),
            scopes=tuple(str(s) for s in data.get("scopes", ())),
            created=str(data.get("created", "")),
            revoked=bool(data.get("revoked", False)),
            revoked_at=data.get("revoked_at"),
            name=data.get("name"),
        )
        if not record.key_hash.startswith("sha256:") or len(record.key_hash) != 71:
            raise ValueError(f"key {record.key_id}: key_hash must be 'sha256:' and 64 hex digits")
        return record


def hash_key(key: str) -> str:
    """The stored form of ``key``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def looks_like_api_key(credential: str) -> bool:
    """Whether a bearer credential is meant as an API key (rather than a JWT)."""
    return credential.startswith(KEY_PREFIX)


def key_id_of(credential: str) -> str | None:
    """The key id of a well-formed API key, read without verifying it (failed-auth throttling)."""
    match = _KEY.fullmatch(credential)
    return match.group(1) if match is not None else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _parse(text: str, path: Path) -> dict[str, ApiKeyRecord]:
    try:
        document = json.loads(text) if text.strip() else {"version": FILE_VERSION, "keys": []}
        if document.get("version") != FILE_VERSION:
            raise ValueError(f"unsupported version {document.get('version')!r} (expected {FILE_VERSION})")
        records = [ApiKeyRecord.from_json(item) for item in document["keys"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"API key file {path} is not valid: {exc}") from exc
    return {r.key_id: r for r in records}


class ApiKeyStore:
    """Verify, create, list and revoke the API keys kept in one JSON file.

    A missing file is an empty store (``create`` makes it). A file that cannot be parsed raises
    here, at construction; later, while serving, a bad rewrite is logged and the last good
    contents stay in force, since editors that save in place expose half-written files.
    """

    def __init__(self, path: str | os.PathLike[str], recheck_interval_s: float = 0.5) -> None:
        self.path = Path(path)
        self.recheck_interval_s = recheck_interval_s
        self._records: dict[str, ApiKeyRecord] = {}
        self._signature: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self._reload(strict=True)

    # ------------------------------------------------------------------ verification (hot path)
    def verify(self, key: str) -> ApiKeyRecord:
        """The record of a valid, unrevoked ``key``; raises :class:`ApiKeyError` otherwise."""
        # The file is stat'ed at most every recheck_interval_s on the request path (a stat costs
        # ~100 us on a busy host); a revocation takes effect within that interval.
        now = time.monotonic()
        if now - self._checked_at >= self.recheck_interval_s:
            self._checked_at = now
            self._reload(strict=False)
        match = _KEY.fullmatch(key)
        if match is None:
            raise ApiKeyError("malformed", "API key is not of the form obs_<id>_<secret>")
        record = self._records.get(match.group(1))
        expected = record.key_hash if record is not None else _DUMMY_HASH
        if not hmac.compare_digest(hash_key(key), expected) or record is None:
            raise ApiKeyError("unknown_key", "API key is not known")
        if record.revoked:
            raise ApiKeyError("revoked", "API key has been revoked")
        return record

    def _reload(self, *, strict: bool) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._records:
                logger.warning("API key file {} disappeared; no API key is accepted until it returns", self.path)
            self._records, self._signature = {}, None
            return
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self._signature:
            return
        self._signature = signature
        try:
            records = _parse(self.path.read_text(), self.path)
        except (OSError, ValueError) as exc:
            if strict:
                raise
            logger.error("{}; keeping the {} keys read before", exc, len(self._records))
            return
        if not strict:
            logger.info("API key file {} changed: {} keys now", self.path, len(records))
        self._records = records

    # ------------------------------------------------------------------ administration (CLI)
    def records(self) -> list[ApiKeyRecord]:
        """Every stored key, revoked ones included, oldest first."""
        self._reload(strict=True)
        return sorted(self._records.values(), key=lambda r: (r.created, r.key_id))

    def create(self, tenant: str, scopes: Iterable[str] = (), name: str | None = None) -> tuple[str, ApiKeyRecord]:
        """Make a new key for ``tenant``; returns ``(key, record)``. The key is not stored, only its hash."""
        if not TENANT_NAME.fullmatch(tenant):
            raise ValueError(f"tenant {tenant!r} must be 1-64 letters, digits, '.', '_' or '-'")
        scopes = tuple(dict.fromkeys(scopes))
        for scope in scopes:
            if not _SCOPE.fullmatch(scope):
                raise ValueError(f"scope {scope!r} must be printable ASCII without spaces, quotes or backslashes")
        with self._locked() as records:
            key_id = secrets.token_hex(6)
            while key_id in records:
                key_id = secrets.token_hex(6)
            key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            record = ApiKeyRecord(key_id, tenant, hash_key(key), scopes, _now(), name=name)
            records[key_id] = record
        return key, record

    def revoke(self, key_id: str | None = None, *, key: str | None = None) -> ApiKeyRecord:
        """Revoke by key id or by the key itself; revoking twice is harmless."""
        if (key_id is None) == (key is None):
            raise ValueError("give exactly one of key_id or key")
        if key is not None:
            match = _KEY.fullmatch(key)
            if match is None:
                raise ValueError("that is not an API key of the form obs_<id>_<secret>")
            key_id = match.group(1)
        with self._locked() as records:
            record = records.get(str(key_id))
            if record is None or (key is not None and not hmac.compare_digest(hash_key(key), record.key_hash)):
                raise KeyError(f"no API key with id {key_id!r} in {self.path}")
            if not record.revoked:
                record = records[record.key_id] = replace(record, revoked=True, revoked_at=_now())
        return record

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, ApiKeyRecord]]:
        """Read-modify-write under an exclusive lock; the file is replaced atomically (mode 0600)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            text = self.path.read_text() if self.path.exists() else ""
            records = _parse(text, self.path)
            yield records
            document = {"version": FILE_VERSION, "keys": [r.to_json() for r in records.values()]}
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(document, fh, indent=2)
                    fh.write("\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        self._signature = None
        self._reload(strict=True)
