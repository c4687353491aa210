"""The development IdP's signing keys: generated, rotated, published as a JWKS, and kept
(private, mode 0600) in one JSON file that ``observatory idp rotate`` and a running IdP share."""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
ALGORITHMS = ("RS256", "ES256", "EdDSA")


def _generate(algorithm: str) -> PrivateKey:
    if algorithm == "RS256":
        return rsa.generate_private_key(65537, 2048)
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}")


def _load_pem(pem: str) -> PrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), None)
    if not isinstance(key, PrivateKey):
        raise ValueError("the development IdP keeps RSA, P-256 and Ed25519 keys only")
    return key


@dataclass
class SigningKey:
    kid: str
    private: PrivateKey
    created: float
    retire_at: float | None = None  # leaves the JWKS at this time (None: published)

    @property
    def algorithm(self) -> str:
        if isinstance(self.private, rsa.RSAPrivateKey):
            return "RS256"
        return "ES256" if isinstance(self.private, ec.EllipticCurvePrivateKey) else "EdDSA"

    def published(self, now: float) -> bool:
        return self.retire_at is None or now < self.retire_at

    def public_jwk(self) -> dict[str, Any]:
        jwk = json.loads(jwt.get_algorithm_by_name(self.algorithm).to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def to_json(self) -> dict[str, Any]:
        pem = self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return {"kid": self.kid, "created": self.created, "retire_at": self.retire_at, "pem": pem.decode()}


class KeyRing:
    """The keys in ``path``; the newest signs, every published one is in the JWKS."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: list[SigningKey] = []
        self._signature: tuple[int, int] | None = None
        self._lock = threading.RLock()

    def ensure(self) -> None:
        """Read the keys, or make the first one."""
        self.sync()
        if not self._keys:
            self.rotate(grace_s=0)

    def sync(self) -> None:
        """Pick up keys another process wrote (cheap when nothing changed)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        with self._lock:
            if (st.st_mtime_ns, st.st_ino) != self._signature:
                self._keys = [
                    SigningKey(k["kid"], _load_pem(k["pem"]), k["created"], k.get("retire_at"))
                    for k in json.loads(self.path.read_text())["keys"]
                ]
                self._signature = (st.st_mtime_ns, st.st_ino)

    def rotate(self, *, grace_s: float | None = None, algorithm: str = "RS256") -> str:
        """Sign with a new key from now on; earlier keys stay published for ``grace_s`` (None: until retired)."""
        key = SigningKey(f"dev-{secrets.token_hex(4)}", _generate(algorithm), time.time())
        with self._lock:
            self.sync()
            now = time.time()
            for old in self._keys:
                if grace_s is not None and old.retire_at is None:
                    old.retire_at = now + grace_s
            self._keys = [k for k in self._keys if k.published(now)] + [key]
            self._save()
        return key.kid

    def retire(self, kid: str) -> None:
        """Take ``kid`` out of the JWKS now."""
        with self._lock:
            self.get(kid).retire_at = time.time()
            self._save()

    def get(self, kid: str | None = None) -> SigningKey:
        """Key ``kid``, or the current signing key."""
        if kid is None:
            return self._keys[-1]
        for key in self._keys:
            if key.kid == kid:
                return key
        raise KeyError(f"the IdP has no key {kid!r}")

    def jwks(self) -> dict[str, Any]:
        now = time.time()
        return {"keys": [key.public_jwk() for key in self._keys if key.published(now)]}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"keys": [k.to_json() for k in self._keys]}, fh)
        os.replace(tmp, self.path)
        st = self.path.stat()
        self._signature = (st.st_mtime_ns, st.st_ino)
