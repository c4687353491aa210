"""Authenticator: JWTs from a real development IdP over HTTP, the attack matrix, JWKS caching and
rotation, settings, and the telemetry each verification leaves behind."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import random
import string
import time
from collections.abc import Callable

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from opentelemetry.trace import SpanKind, StatusCode

from gpt_observatory.serving_hooks.auth import Authenticator, AuthError, AuthSettings, Principal
from gpt_observatory.serving_hooks.idp import JWKS_PATH, DevIdP
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.settings import ConfigError
from tests.components import free_port
from tests.serving_hooks.conftest import AUDIENCE

SUBJECT = "alice@example.com"
ATTACKER_RSA = rsa.generate_private_key(65537, 2048)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(header: dict, payload: dict) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"


def valid_claims(idp: DevIdP) -> dict:
    now = int(time.time())
    return {"iss": idp.issuer, "sub": SUBJECT, "aud": AUDIENCE, "iat": now, "exp": now + 300, "tenant": "acme"}


def settings(idp: DevIdP, **overrides) -> AuthSettings:
    return AuthSettings(issuer=idp.issuer, audience=AUDIENCE, leeway_s=5, **overrides)


def authenticate(auth: Authenticator, header: str | None, scopes=()) -> Principal:
    return asyncio.run(auth.authenticate(header, scopes))


def refusal(auth: Authenticator, header: str | None, scopes=()) -> AuthError:
    with pytest.raises(AuthError) as info:
        authenticate(auth, header, scopes)
    return info.value


@pytest.fixture
def auth(dev_idp, otel) -> Authenticator:
    return Authenticator(settings(dev_idp), tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)


# ---------------------------------------------------------------------------------------------- accepted
def test_a_token_from_the_idp_yields_tenant_scopes_and_a_hashed_subject(auth, dev_idp):
    principal = authenticate(auth, bearer(dev_idp.mint(SUBJECT, "acme", ["inference", "admin"])), ["inference"])

    assert principal.method == "jwt"
    assert principal.tenant == "acme"
    assert principal.scopes == {"inference", "admin"}
    assert len(principal.subject_hash) == 16 and SUBJECT not in principal.subject_hash
    again = authenticate(auth, bearer(dev_idp.mint(SUBJECT, "acme")))
    assert again.subject_hash == principal.subject_hash  # stable: dashboards can count distinct callers


def test_scheme_is_case_insensitive_and_scp_lists_are_scopes(auth, dev_idp):
    token = dev_idp.mint(SUBJECT, "acme", claims={"scp": ["inference"]})
    assert authenticate(auth, f"bearer  {token} ", ["inference"]).scopes == {"inference"}


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
def test_es256_and_eddsa_keys_are_accepted(fresh_idp, algorithm):
    fresh_idp.rotate(algorithm=algorithm)
    auth = Authenticator(settings(fresh_idp))
    token = fresh_idp.mint(SUBJECT, "acme")
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    assert authenticate(auth, bearer(token)).tenant == "acme"


def test_a_tenant_claim_can_be_a_dotted_path(dev_idp):
    auth = Authenticator(settings(dev_idp, tenant_claim="org.id"))
    token = dev_idp.mint(SUBJECT, tenant=None, claims={"org": {"id": "globex"}})
    assert authenticate(auth, bearer(token)).tenant == "globex"


# ---------------------------------------------------------------------------------------------- attack matrix
def _alg_none(idp: DevIdP) -> str:
    return segments({"alg": "none", "typ": "JWT", "kid": idp.current_kid}, valid_claims(idp)) + "."


def _hs256_with_public_key(idp: DevIdP) -> str:
    # The classic confusion attack: the public PEM (which anyone can fetch) used as an HMAC secret.
    signing_input = segments({"alg": "HS256", "typ": "JWT", "kid": idp.current_kid}, valid_claims(idp))
    mac = hmac.new(idp.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def _attacker_key_with_real_kid(idp: DevIdP) -> str:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(ATTACKER_RSA.public_key()))
    headers = {"kid": idp.current_kid, "jwk": public}  # an embedded key must be ignored
    return jwt.encode(valid_claims(idp), ATTACKER_RSA, algorithm="RS256", headers=headers)


def _es256_with_rsa_kid(idp: DevIdP) -> str:
    return jwt.encode(valid_claims(idp), ec.generate_private_key(ec.SECP256R1()), "ES256",
                      headers={"kid": idp.current_kid})


def _tampered_payload(idp: DevIdP) -> str:
    header, _, signature = idp.mint(SUBJECT, "acme").split(".")
    forged = b64(json.dumps({**valid_claims(idp), "tenant": "someone-else"}).encode())
    return f"{header}.{forged}.{signature}"


def _tampered_signature(idp: DevIdP) -> str:
    header, payload, signature = idp.mint(SUBJECT, "acme").split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    return f"{header}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1:]}"


ATTACKS: list[tuple[str, Callable[[DevIdP], str | None], str, str]] = [
    ("alg none", lambda i: bearer(_alg_none(i)), "bad_signature", "jwt"),
    ("HS256 signed with the public key", lambda i: bearer(_hs256_with_public_key(i)), "bad_signature", "jwt"),
    ("attacker key under the real kid", lambda i: bearer(_attacker_key_with_real_kid(i)), "bad_signature", "jwt"),
    ("ES256 under an RSA kid", lambda i: bearer(_es256_with_rsa_kid(i)), "bad_signature", "jwt"),
    ("expired", lambda i: bearer(i.mint(SUBJECT, "acme", ttl=-60)), "expired", "jwt"),
    ("not yet valid (nbf)", lambda i: bearer(i.mint(SUBJECT, "acme", not_before=time.time() + 600)),
     "not_yet_valid", "jwt"),
    ("issued in the future (iat)", lambda i: bearer(i.mint(SUBJECT, "acme", now=time.time() + 600)),
     "not_yet_valid", "jwt"),
    ("wrong issuer", lambda i: bearer(i.mint(SUBJECT, "acme", issuer="https://idp.example.com")),
     "wrong_issuer", "jwt"),
    ("wrong audience", lambda i: bearer(i.mint(SUBJECT, "acme", audience="another-api")), "wrong_audience", "jwt"),
    ("no audience", lambda i: bearer(i.mint(SUBJECT, "acme", claims={"aud": None})), "wrong_audience", "jwt"),
    ("unknown kid", lambda i: bearer(jwt.encode(valid_claims(i), ATTACKER_RSA, "RS256", headers={"kid": "evil"})),
     "unknown_key", "jwt"),
    ("no kid", lambda i: bearer(jwt.encode(valid_claims(i), ATTACKER_RSA, "RS256")), "unknown_key", "jwt"),
    ("tampered payload", lambda i: bearer(_tampered_payload(i)), "bad_signature", "jwt"),
    ("tampered signature", lambda i: bearer(_tampered_signature(i)), "bad_signature", "jwt"),
    ("no expiry", lambda i: bearer(i.mint(SUBJECT, "acme", claims={"exp": None})), "malformed", "jwt"),
    ("no tenant claim", lambda i: bearer(i.mint(SUBJECT, tenant=None)), "malformed", "jwt"),
    ("alg given as a list", lambda i: bearer(segments({"alg": ["RS256"], "kid": i.current_kid}, valid_claims(i))
                                              + ".c2ln"), "bad_signature", "jwt"),
    ("header nested thousands deep", lambda i: bearer(b64(b"[" * 5000) + ".e30.c2ln"), "malformed", "jwt"),
    ("garbage", lambda i: "Bearer not-a-token!", "malformed", "jwt"),
    ("three garbage segments", lambda i: "Bearer aaa.bbb.ccc", "malformed", "jwt"),
    ("empty bearer", lambda i: "Bearer ", "malformed", "none"),
    ("blank bearer", lambda i: "Bearer    ", "malformed", "none"),
    ("oversized token", lambda i: bearer(i.mint(SUBJECT, "acme", claims={"pad": "x" * 9000})), "malformed", "jwt"),
    ("wrong scheme", lambda i: "Basic " + base64.b64encode(b"alice:secret").decode(), "malformed", "none"),
    ("missing header", lambda i: None, "missing", "none"),
    ("empty header", lambda i: "", "missing", "none"),
]


@pytest.mark.parametrize(("case", "make", "reason", "method"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_refused_with_401_and_its_reason(auth, dev_idp, otel, case, make, reason, method):
    header = make(dev_idp)

    err = refusal(auth, header)

    assert (err.status, err.reason, err.method) == (401, reason, method)
    assert reason in names.AUTH_OUTCOMES
    credential = (header or "").partition(" ")[2].strip()
    if credential:
        for text in (str(err), err.detail, err.www_authenticate, repr(err.args)):
            assert credential not in text and credential[-20:] not in text
    [span] = otel.spans(names.SPAN_AUTH_VERIFY)
    assert span.attributes[names.AUTH_OUTCOME] == reason
    assert not any(p.attributes[names.AUTH_OUTCOME] == "ok" for p in otel.points(names.AUTH_ATTEMPTS.name))


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_random_corruptions_are_refused_never_crash(fresh_idp, algorithm):
    fresh_idp.rotate(algorithm=algorithm)
    auth = Authenticator(settings(fresh_idp))
    token = fresh_idp.mint(SUBJECT, "acme")
    rng = random.Random(algorithm)
    alphabet = string.ascii_letters + string.digits + "-_.=+/ "

    async def fuzz() -> set[str]:
        reasons = set()
        for _ in range(150):
            chars = list(token)
            for _ in range(rng.randint(1, 4)):
                op, at = rng.random(), rng.randrange(len(chars))
                if op < 0.5:
                    chars[at] = rng.choice(alphabet)
                elif op < 0.75:
                    del chars[at]
                else:
                    chars.insert(at, rng.choice(alphabet))
            mutated = "".join(chars)
            if mutated == token:
                continue
            with pytest.raises(AuthError) as info:
                await auth.authenticate(bearer(mutated))
            reasons.add(info.value.reason)
        return reasons

    assert asyncio.run(fuzz()) <= {"malformed", "bad_signature", "unknown_key", "expired", "wrong_issuer",
                                   "wrong_audience", "not_yet_valid"}


def test_missing_scope_is_403_insufficient_scope(auth, dev_idp):
    err = refusal(auth, bearer(dev_idp.mint(SUBJECT, "acme", ["inference"])), ["inference", "admin"])

    assert (err.status, err.reason, err.method, err.tenant) == (403, "insufficient_scope", "jwt", "acme")
    assert 'error="insufficient_scope"' in err.www_authenticate and "admin" in err.www_authenticate


def test_scopes_required_per_model_come_from_settings(dev_idp):
    auth = Authenticator(settings(dev_idp, model_scopes={"tiny-gpt": ["inference"], "*": ["basic"]}))
    assert auth.scopes_for("tiny-gpt") == {"inference"}
    assert auth.scopes_for("other") == {"basic"}


def test_allow_list_can_be_narrowed(dev_idp):
    auth = Authenticator(settings(dev_idp, algorithms=("ES256",)))
    assert refusal(auth, bearer(dev_idp.mint(SUBJECT, "acme"))).reason == "bad_signature"


# ---------------------------------------------------------------------------------------------- verified-token cache
def test_a_remembered_token_still_expires(dev_idp):
    auth = Authenticator(AuthSettings(issuer=dev_idp.issuer, audience=AUDIENCE, leeway_s=0))
    assert asyncio.run(auth.warm_up())
    exp = math.ceil(time.time() + 0.5)
    token = dev_idp.mint(SUBJECT, "acme", claims={"exp": exp})
    assert authenticate(auth, bearer(token)).tenant == "acme"
    time.sleep(exp - time.time() + 0.05)
    assert refusal(auth, bearer(token)).reason == "expired"


def test_tampering_with_a_remembered_token_is_caught(auth, dev_idp):
    token = dev_idp.mint(SUBJECT, "acme")
    assert authenticate(auth, bearer(token)).tenant == "acme"
    header, _, signature = token.split(".")
    forged = b64(json.dumps({**valid_claims(dev_idp), "tenant": "someone-else"}).encode())
    assert refusal(auth, bearer(f"{header}.{forged}.{signature}")).reason == "bad_signature"
    assert refusal(auth, bearer(token), ["admin"]).reason == "insufficient_scope"  # scopes checked on every hit


# ---------------------------------------------------------------------------------------------- JWKS cache
def test_cached_keys_mean_no_idp_request_per_verification(auth, dev_idp):
    async def many() -> None:
        for _ in range(50):
            await auth.authenticate(bearer(dev_idp.mint(SUBJECT, "acme")))

    authenticate(auth, bearer(dev_idp.mint(SUBJECT, "acme")))
    before = dict(dev_idp.hits)
    asyncio.run(many())
    assert dict(dev_idp.hits) == before


def test_key_rotation_is_picked_up_without_restart(fresh_idp):
    auth = Authenticator(settings(fresh_idp, jwks_min_refresh_interval_s=0))
    old_kid = fresh_idp.current_kid
    old_token = fresh_idp.mint(SUBJECT, "acme")
    assert authenticate(auth, bearer(old_token)).tenant == "acme"

    new_kid = fresh_idp.rotate()  # the old key stays published
    assert authenticate(auth, bearer(fresh_idp.mint(SUBJECT, "acme"))).tenant == "acme"
    assert auth.jwks.kids == {old_kid, new_kid}
    assert authenticate(auth, bearer(old_token)).tenant == "acme"  # tokens issued before still verify

    fresh_idp.rotate(grace_s=0)  # now both earlier keys leave the JWKS
    assert authenticate(auth, bearer(fresh_idp.mint(SUBJECT, "acme"))).tenant == "acme"
    assert refusal(auth, bearer(old_token)).reason == "unknown_key"


def test_an_unknown_kid_flood_costs_the_idp_one_request_per_interval(dev_idp):
    auth = Authenticator(settings(dev_idp, jwks_min_refresh_interval_s=1.0))
    flood = [jwt.encode(valid_claims(dev_idp), ATTACKER_RSA, "RS256", headers={"kid": f"evil-{n}"})
             for n in range(200)]

    async def attack() -> list:
        return await asyncio.gather(*(auth.authenticate(bearer(t)) for t in flood), return_exceptions=True)

    before = dev_idp.hits[JWKS_PATH]
    results = asyncio.run(attack())  # cold cache: 200 concurrent misses share one fetch
    results += asyncio.run(attack())  # within the interval: no fetch at all
    assert dev_idp.hits[JWKS_PATH] - before == 1
    assert {(type(r), getattr(r, "reason", None)) for r in results} == {(AuthError, "unknown_key")}

    time.sleep(1.05)
    asyncio.run(attack())
    assert dev_idp.hits[JWKS_PATH] - before == 2  # one more after the interval, not 200
    assert authenticate(auth, bearer(dev_idp.mint(SUBJECT, "acme"))).tenant == "acme"


def test_stale_keys_are_served_while_refreshing_in_the_background(dev_idp):
    auth = Authenticator(settings(dev_idp, jwks_refresh_interval_s=0.1, jwks_min_refresh_interval_s=0.1))

    async def scenario() -> None:
        await auth.authenticate(bearer(dev_idp.mint(SUBJECT, "acme")))
        fetched = auth.jwks.fetches
        await asyncio.sleep(0.15)
        await auth.authenticate(bearer(dev_idp.mint(SUBJECT, "acme")))  # answered from the stale cache
        assert auth.jwks.fetches == fetched
        await asyncio.sleep(0.2)  # the background refresh has landed
        assert auth.jwks.fetches == fetched + 1

    asyncio.run(scenario())


def test_while_the_idp_is_down_cached_keys_keep_working_and_it_is_retried_once_per_interval(fresh_idp):
    auth = Authenticator(settings(fresh_idp, jwks_refresh_interval_s=0.05, jwks_min_refresh_interval_s=0.5))
    token = fresh_idp.mint(SUBJECT, "acme")

    async def scenario() -> None:
        await auth.authenticate(bearer(token))
        fresh_idp.__exit__(None, None, None)  # the IdP goes away
        await asyncio.sleep(0.55)
        attempts = auth.jwks.attempts
        for _ in range(20):
            assert (await auth.authenticate(bearer(token))).tenant == "acme"  # stale keys still verify
            await asyncio.sleep(0.002)
        assert auth.jwks.attempts == attempts + 1  # one retry within the interval, not one per request

    asyncio.run(scenario())


def test_an_unreachable_idp_refuses_tokens_without_raising_anything_else(dev_idp):
    auth = Authenticator(AuthSettings(issuer=f"http://127.0.0.1:{free_port()}", audience=AUDIENCE))
    assert asyncio.run(auth.warm_up()) is False
    assert refusal(auth, bearer(dev_idp.mint(SUBJECT, "acme"))).reason == "unknown_key"


def test_a_discovery_document_for_another_issuer_is_not_trusted(dev_idp):
    impostor = dev_idp.issuer.replace("127.0.0.1", "localhost")  # same server, different issuer string
    auth = Authenticator(AuthSettings(issuer=impostor, audience=AUDIENCE))
    token = dev_idp.mint(SUBJECT, "acme", issuer=impostor)
    assert refusal(auth, bearer(token)).reason == "unknown_key"


# ---------------------------------------------------------------------------------------------- settings
def test_settings_come_from_the_environment(monkeypatch, dev_idp):
    monkeypatch.setenv("OBSERVATORY_AUTH_ISSUER", dev_idp.issuer)
    monkeypatch.setenv("OBSERVATORY_AUTH_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("OBSERVATORY_AUTH_ALGORITHMS", "RS256, EdDSA")
    monkeypatch.setenv("OBSERVATORY_AUTH_MODEL_SCOPES", '{"tiny-gpt": ["inference"]}')
    loaded = AuthSettings.load(leeway_s=10)
    assert loaded.algorithms == ("RS256", "EdDSA")
    assert loaded.model_scopes == {"tiny-gpt": ("inference",)} and loaded.leeway_s == 10
    assert loaded.throttle_by == ("address", "key_id")
    monkeypatch.setenv("OBSERVATORY_AUTH_THROTTLE_BY", "")  # empty: failed-auth throttling off
    assert AuthSettings.load().throttle_by == ()


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        ({"algorithms": "RS256,HS256"}, "algorithms", "EdDSA"),
        ({"algorithms": ""}, "algorithms", "RS256"),
        ({"issuer": "http://idp.example.com", "audience": "a"}, "issuer", "https"),
        ({"issuer": "https://idp.example.com"}, None, "OBSERVATORY_AUTH_AUDIENCE"),  # a rule across two keys
        ({"leeway_s": -1}, "leeway_s", "OBSERVATORY_AUTH_LEEWAY_S"),
        ({"max_token_length": 10}, "max_token_length", "256"),
        ({"throttle_by": "address,host"}, "throttle_by", "key_id"),
        ({"throttle_failures": 0}, "throttle_failures", "OBSERVATORY_AUTH_THROTTLE_FAILURES"),
    ],
)
def test_an_invalid_setting_is_an_error_naming_the_key(overrides, key, hint):
    with pytest.raises(ConfigError) as info:
        AuthSettings.load(**overrides)
    message = str(info.value)
    assert (key is None or f"'{key}'" in message) and hint in message


# ---------------------------------------------------------------------------------------------- telemetry
def test_each_verification_records_a_span_a_count_and_a_duration(auth, dev_idp, otel):
    tracer = otel.tracer_provider.get_tracer("test")
    token = dev_idp.mint(SUBJECT, "acme", ["inference"])
    expired = dev_idp.mint(SUBJECT, "acme", ttl=-60)

    async def requests() -> None:
        with tracer.start_as_current_span("POST /v1/chat/completions", kind=SpanKind.SERVER):
            await auth.authenticate(bearer(token))
        for header in (bearer(token), bearer(expired), None):
            try:
                await auth.authenticate(header)
            except AuthError:
                pass

    asyncio.run(requests())

    spans = otel.spans(names.SPAN_AUTH_VERIFY)
    outcomes = [(s.attributes[names.AUTH_METHOD], s.attributes[names.AUTH_OUTCOME]) for s in spans]
    assert outcomes == [("jwt", "ok"), ("jwt", "ok"), ("jwt", "expired"), ("none", "missing")]
    assert all(s.kind is SpanKind.INTERNAL for s in spans)
    parent = otel.spans("POST /v1/chat/completions")[0]
    assert spans[0].parent.span_id == parent.context.span_id
    assert spans[0].attributes[names.TENANT] == "acme"
    assert spans[0].attributes[names.AUTH_SUBJECT_HASH] == auth.subject_hash("jwt", SUBJECT)
    assert spans[2].status.status_code is StatusCode.ERROR and spans[2].status.description == "expired"

    attempts = {(p.attributes[names.AUTH_METHOD], p.attributes[names.AUTH_OUTCOME]): p.value
                for p in otel.points(names.AUTH_ATTEMPTS.name)}
    assert attempts == {("jwt", "ok"): 2, ("jwt", "expired"): 1, ("none", "missing"): 1}
    durations = otel.points(names.AUTH_DURATION.name)
    assert sum(p.count for p in durations) == 4
    assert all(0 < p.sum < 1 and tuple(p.explicit_bounds) == names.AUTH_DURATION_BUCKETS for p in durations)

    exported = json.dumps([json.loads(s.to_json()) for s in otel.spans()])
    for secret in (token, token.split(".")[2], expired, SUBJECT):
        assert secret not in exported


def test_through_the_project_telemetry_pipeline_nothing_secret_is_exported(dev_idp, tmp_path):
    from gpt_observatory import telemetry
    handle = telemetry.configure(
        "auth-test", traces_exporter=["memory"], metrics_exporter=["memory"], logs_exporter=["memory"],
        state_dir=str(tmp_path),
    )
    try:
        auth = Authenticator(settings(dev_idp))  # the global providers configure() installed
        token = dev_idp.mint(SUBJECT, "acme")
        authenticate(auth, bearer(token))
        assert refusal(auth, bearer(token + "x")).reason in ("bad_signature", "malformed")

        spans = handle.memory.spans()
        outcomes = [s.attributes[names.AUTH_OUTCOME] for s in spans if s.name == names.SPAN_AUTH_VERIFY]
        assert outcomes[0] == "ok"
        assert handle.memory.metrics()[names.AUTH_ATTEMPTS.name]
        everything = json.dumps([json.loads(s.to_json()) for s in spans]) + repr(handle.memory.metrics()) + \
            json.dumps([json.loads(r.to_json()) for r in handle.memory.logs()])
        assert token not in everything and token.split(".")[2] not in everything and SUBJECT not in everything
    finally:
        telemetry.shutdown()
