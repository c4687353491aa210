"""The demo's scripted client: good, streaming, unauthenticated, forged-token and over-limit requests.

Good and streaming requests go through the official ``openai`` client (a JWT from the
development IdP's client-credentials endpoint, and an API key); the bad ones are raw HTTP, as
an attacker or a misconfigured caller would send them. What the client notes here is only a
cross-check: the summary's figures come from the gateway's own telemetry.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from gpt_observatory.demo.stack import MODEL, REQUESTS_PER_MINUTE, SCOPE, Credentials

# Prompt text must never reach telemetry (content capture is off); the reliability suite scans for these.
PROMPTS: tuple[str, ...] = (
    "Shall I compare thee to a summer's day?",
    "Tell me of the quiet harbour at dawn",
    "What did the lighthouse keeper write",
    "Once upon a midnight dreary",
)
MAX_TOKENS = 24
# The tenants the scripted client's credentials belong to (stack.make_credentials, the IdP's demo client).
JWT_TENANT, STREAMING_TENANT, BURST_TENANT = "demo", "batch", "burst"


@dataclass
class ClientReport:
    """What the client sent, by kind, and the statuses it got back."""

    sent: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    stream_chunks: int = 0

    def note(self, kind: str, status: int, n: int = 1) -> None:
        self.sent[kind] += n
        self.statuses.setdefault(kind, Counter())[status] += n

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def as_dict(self) -> dict[str, Any]:
        return {kind: {str(s): n for s, n in sorted(c.items())} for kind, c in self.statuses.items()}


def access_token(creds: Credentials) -> str:
    """An access token by OAuth2 client credentials from the development IdP."""
    discovery = httpx.get(creds.issuer + "/.well-known/openid-configuration", timeout=10).raise_for_status().json()
    answer = httpx.post(discovery["token_endpoint"], data={"grant_type": "client_credentials", "scope": SCOPE},
                        auth=(creds.client_id, creds.client_secret), timeout=10)
    return str(answer.raise_for_status().json()["access_token"])


def forged_token(kid: str, issuer: str, audience: str) -> str:
    """RS256 with the IdP's key id and valid claims, signed by a key the IdP never had."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "sub": "mallory", "tenant": "demo", "scope": SCOPE,
              "iat": now, "exp": now + 300}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def unsigned_token(issuer: str, audience: str) -> str:
    """``alg: none``: no signature at all."""
    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'iss': issuer, 'aud': audience, 'sub': 'mallory', 'exp': now + 300})}."


def run(base_url: str, creds: Credentials, idp: Any, report: ClientReport | None = None,
        spend: Any = None) -> ClientReport:
    """Send the whole script to the gateway at ``base_url`` (its ``/v1`` root); returns the notes
    (added to ``report`` when given: the canary traffic is noted there first). Each metered answer's
    usage goes to ``spend`` (a :class:`gpt_observatory.demo.billing.Spend`) when given."""
    import openai

    report = ClientReport() if report is None else report
    jwt_client = openai.OpenAI(base_url=base_url, api_key=access_token(creds), max_retries=0, timeout=60)
    key_client = openai.OpenAI(base_url=base_url, api_key=creds.api_key, max_retries=0, timeout=60)

    def seen(tenant: str) -> Any:
        return None if spend is None else lambda status, usage: spend.note(tenant, MODEL, status, usage)

    for prompt in (*PROMPTS, PROMPTS[0]):  # good: JWT, chat
        _official(report, "good (JWT)", lambda p=prompt: jwt_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=MAX_TOKENS, temperature=0.8),
            seen(JWT_TENANT))
    for prompt in PROMPTS[1:3]:  # good: JWT, text completion
        _official(report, "good (JWT)", lambda p=prompt: jwt_client.completions.create(
            model=MODEL, prompt=p, max_tokens=MAX_TOKENS), seen(JWT_TENANT))
    for prompt in PROMPTS:  # streaming: API key
        def stream(p: str = prompt) -> Any:
            usage = None
            for chunk in key_client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=MAX_TOKENS, stream=True,
                stream_options={"include_usage": True},
            ):
                report.stream_chunks += 1
                usage = chunk.usage or usage
            return usage
        _official(report, "streaming (API key)", stream, seen(STREAMING_TENANT))

    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": MAX_TOKENS}
    with httpx.Client(base_url=base_url, timeout=60) as raw:
        def post(kind: str, token: str | None, payload: dict[str, Any] = body, scheme: str = "Bearer",
                 tenant: str | None = None) -> None:
            headers = {"authorization": f"{scheme} {token}"} if token is not None else {}
            answer = raw.post("/chat/completions", json=payload, headers=headers)
            report.note(kind, answer.status_code)
            if spend is not None and tenant is not None:
                spend.note(tenant, MODEL, answer.status_code,
                           answer.json().get("usage") if answer.status_code == 200 else None)

        post("unauthenticated", None)
        post("unauthenticated", base64.b64encode(b"demo:password").decode(), scheme="Basic")
        post("forged token", forged_token(idp.current_kid, creds.issuer, idp.audience))
        post("forged token", unsigned_token(creds.issuer, idp.audience))
        post("expired token", idp.mint("demo-app", tenant="demo", scopes=[SCOPE], ttl=-600))
        post("revoked API key", creds.revoked_key)
        post("missing scope", creds.no_scope_key)
        tiny = {**body, "max_tokens": 1}
        for _ in range(REQUESTS_PER_MINUTE + 3):
            post("over limit (burst)", creds.burst_key, tiny, tenant=BURST_TENANT)
    return report


def _official(report: ClientReport, kind: str, call: Any, seen: Any = None) -> None:
    """One call through the openai client; its HTTP status (an API error's too) is noted, and with
    ``seen`` its status and usage (the response's, or what ``call`` returns)."""
    import openai

    try:
        answer = call()
    except openai.APIStatusError as e:
        report.note(kind, e.status_code)
        if seen is not None:
            seen(e.status_code, None)
    else:
        report.note(kind, 200)
        if seen is not None:
            seen(200, getattr(answer, "usage", answer))  # a completion's usage; a stream returns its last chunk's
