"""A development OpenID provider for demos and tests; never part of a production deployment.

It serves a discovery document and a JWKS on loopback only, mints access tokens
(:meth:`DevIdP.mint`, or OAuth2 client credentials at ``POST /token``) and rotates keys on
demand. Keys are RS256 unless a rotation asks for ES256 or EdDSA (to exercise the verifier's
allow-list). The gateway treats it like any other issuer: it only ever sees its discovery
document and JWKS. Signing keys persist under ``<state dir>/idp/`` so a restarted IdP and a
running gateway agree, and the issuer URL is written to ``<state dir>/idp/issuer``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import socket
import threading
import time
from base64 import b64decode
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gpt_observatory.serving_hooks._idp_keys import ALGORITHMS, KeyRing
from gpt_observatory.serving_hooks._jwks import DISCOVERY_PATH, is_loopback_host

JWKS_PATH = "/jwks.json"
TOKEN_PATH = "/token"


@dataclass(frozen=True)
class Client:
    """An OAuth2 client allowed to use the client-credentials grant."""

    client_id: str
    secret_hash: str
    tenant: str
    scopes: frozenset[str]


class DevIdP:
    """The development IdP. Use as a context manager (serves in a thread) or call :meth:`serve_forever`."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        audience: str = "observatory",
        token_ttl: int = 300,
    ) -> None:
        if not is_loopback_host(host):
            raise ValueError(f"the development IdP serves on loopback only, not {host!r}")
        self.dir = Path(state_dir) / "idp"
        self.audience = audience
        self.token_ttl = token_ttl
        self.hits: Counter[str] = Counter()  # requests per path, for tests that count IdP traffic
        self._host, self._port = host, port
        self._sock: socket.socket | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._clients: dict[str, Client] = {}
        self.keys = KeyRing(self.dir / "keys.json")

    # ------------------------------------------------------------------ identity
    @property
    def issuer(self) -> str:
        """The issuer URL (known once :meth:`bind` has run; entering the context binds)."""
        if self._sock is None:
            raise RuntimeError("bind() the IdP first: its issuer URL contains the port")
        return f"http://{self._host}:{self._sock.getsockname()[1]}"

    @property
    def current_kid(self) -> str:
        return self.keys.get().kid

    def register_client(self, client_id: str, secret: str, tenant: str, scopes: Iterable[str] = ()) -> Client:
        """Allow ``client_id`` to get tokens for ``tenant`` with at most ``scopes``."""
        client = Client(client_id, hashlib.sha256(secret.encode()).hexdigest(), tenant, frozenset(scopes))
        self._clients[client_id] = client
        return client

    # ------------------------------------------------------------------ keys
    def load_or_create_keys(self) -> None:
        """Read the signing keys from the state folder, or make the first one."""
        self.keys.ensure()

    def rotate(self, *, grace_s: float | None = None, algorithm: str = "RS256") -> str:
        """Sign with a new ``algorithm`` key from now on; returns its kid.

        The previous keys stay in the JWKS for ``grace_s`` seconds (forever when None, so tokens
        already issued keep verifying), which lets tests and demos show both overlap and removal.
        """
        return self.keys.rotate(grace_s=grace_s, algorithm=algorithm)

    def retire(self, kid: str) -> None:
        """Remove ``kid`` from the JWKS now."""
        self.keys.retire(kid)

    def jwks(self) -> dict[str, Any]:
        """The published key set."""
        self.keys.sync()
        return self.keys.jwks()

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.issuer + JWKS_PATH,
            "token_endpoint": self.issuer + TOKEN_PATH,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "id_token_signing_alg_values_supported": list(ALGORITHMS),
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
        }

    # ------------------------------------------------------------------ tokens
    def mint(
        self,
        sub: str,
        tenant: str | None = "demo",
        scopes: Iterable[str] = (),
        audience: str | list[str] | None = None,
        ttl: float | None = None,
        *,
        kid: str | None = None,
        issuer: str | None = None,
        now: float | None = None,
        not_before: float | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        """An access token signed with the current key (or ``kid``).

        ``ttl`` may be negative (already expired); ``claims`` override any claim (None drops it).
        """
        now = time.time() if now is None else now
        payload: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "sub": sub,
            "aud": audience if audience is not None else self.audience,
            "iat": int(now),
            "exp": int(now + (self.token_ttl if ttl is None else ttl)),
            "jti": secrets.token_hex(8),
        }
        if tenant is not None:
            payload["tenant"] = tenant
        if scopes:
            payload["scope"] = " ".join(scopes)
        if not_before is not None:
            payload["nbf"] = int(not_before)
        payload.update(claims or {})
        payload = {k: v for k, v in payload.items() if v is not None}
        key = self.keys.get(kid)
        return jwt.encode(payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid})

    def public_pem(self, kid: str | None = None) -> bytes:
        """The PEM public key of ``kid`` (the current key by default); tests use it for forgeries."""
        return self.keys.get(kid).public_pem()

    # ------------------------------------------------------------------ HTTP
    def app(self) -> Starlette:
        return Starlette(routes=[
            Route(DISCOVERY_PATH, self._discovery_endpoint),
            Route(JWKS_PATH, self._jwks_endpoint),
            Route(TOKEN_PATH, self._token_endpoint, methods=["POST"]),
        ])

    def bind(self) -> socket.socket:
        """Open the listening socket (port 0 picks a free one) and record the issuer URL."""
        if self._sock is None:
            self.load_or_create_keys()
            self._sock = socket.create_server((self._host, self._port))
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "issuer").write_text(self.issuer + "\n")
        return self._sock

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        self._make_server().run(sockets=[self.bind()])

    def __enter__(self) -> DevIdP:
        sock = self.bind()
        server = self._make_server()
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="dev-idp", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the development IdP did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = self._thread = None

    def _make_server(self) -> Any:
        import uvicorn

        config = uvicorn.Config(self.app(), log_level="warning", lifespan="off", access_log=False, log_config=None)
        self._server = uvicorn.Server(config)
        return self._server

    async def _discovery_endpoint(self, request: Request) -> JSONResponse:
        self.hits[DISCOVERY_PATH] += 1
        return JSONResponse(self.discovery())

    async def _jwks_endpoint(self, request: Request) -> JSONResponse:
        self.hits[JWKS_PATH] += 1
        return JSONResponse(self.jwks(), headers={"Cache-Control": "max-age=60"})

    async def _token_endpoint(self, request: Request) -> JSONResponse:
        """OAuth2 client credentials (RFC 6749 §4.4), client auth by HTTP Basic or form fields."""
        self.hits[TOKEN_PATH] += 1
        self.keys.sync()
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            with contextlib.suppress(ValueError):
                client_id, _, secret = b64decode(basic[6:]).decode().partition(":")
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
        client = self._clients.get(client_id or "")
        given = hashlib.sha256((secret or "").encode()).hexdigest()
        if client is None or not hmac.compare_digest(given, client.secret_hash):
            return _oauth_error(401, "invalid_client", "unknown client or wrong secret")
        asked = frozenset(form.get("scope", "").split()) or client.scopes
        if not asked <= client.scopes:
            return _oauth_error(400, "invalid_scope", f"client may ask for: {' '.join(sorted(client.scopes))}")
        scope = " ".join(sorted(asked))
        token = self.mint(client.client_id, client.tenant, sorted(asked), claims={"client_id": client.client_id})
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl, "scope": scope},
            headers={"Cache-Control": "no-store"},
        )


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Basic realm="dev-idp"'} if status == 401 else {}
    return JSONResponse({"error": error, "error_description": description}, status_code=status, headers=headers)
