"""Hostile authentication: JWT claims of every type, signed with the development IdP's real key, are
refused (a 401, never a 500, never accepted unless valid); failed authentications are throttled per
client address and per API key id, through the real gateway, in bounded memory."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt_observatory.serving_hooks._throttle import FailureThrottle
from gpt_observatory.serving_hooks.auth import Authenticator, AuthError, AuthSettings
from gpt_observatory.serving_hooks.gateway import GatewayConfig, GatewayMiddleware
from gpt_observatory.serving_hooks.idp import DevIdP
from gpt_observatory.telemetry import names
from tests.serving_hooks.conftest import AUDIENCE
from tests.serving_hooks.support import assert_no_secrets, exported_text, point_value, serve, settle
from tests.serving_hooks.test_gateway import ROUTES, EchoApp

SUBJECT = "alice@example.com"
LATEST = 253_402_300_799  # 9999-12-31T23:59:59Z
HOSTILE_REASONS = {"malformed", "expired", "not_yet_valid"}


def sign(idp: DevIdP, claims: dict) -> str:
    """Any JSON payload (nulls, huge numbers, a non-string iss) signed with the IdP's current key."""
    key = idp.keys.get()
    return jwt.PyJWS().encode(json.dumps(claims).encode(), key.private, key.algorithm, {"kid": key.kid})


def good_claims(idp: DevIdP) -> dict:
    now = int(time.time())
    return {"iss": idp.issuer, "aud": AUDIENCE, "sub": SUBJECT, "tenant": "acme", "iat": now - 10, "nbf": now - 10,
            "exp": now + 600}


def verify(auth: Authenticator, token: str, client: str | None = None, scopes=()):
    return asyncio.run(auth.authenticate(f"Bearer {token}", scopes, client))


def refusal(auth: Authenticator, token: str, client: str | None = None, scopes=()) -> AuthError:
    with pytest.raises(AuthError) as info:
        verify(auth, token, client, scopes)
    return info.value


@pytest.fixture(scope="module")
def auth(dev_idp) -> Authenticator:
    """Throttling off: the claim properties send thousands of refused tokens."""
    return Authenticator(AuthSettings(issuer=dev_idp.issuer, audience=AUDIENCE, leeway_s=5, throttle_by=()))


# ---------------------------------------------------------------------------------------------- JWT claims
def _not_a_date(value) -> bool:
    return not (type(value) in (int, float) and float(value).is_integer() and 0 <= value <= LATEST)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=6,
)
hostile_dates = st.one_of(
    st.booleans(), st.none(), st.text(max_size=12), st.lists(st.integers(), max_size=2), st.dictionaries(
        st.text(max_size=3), st.integers(), max_size=2),
    st.integers(0, 2**40).map(str),  # numeric strings: PyJWT's int() takes them
    st.floats().filter(_not_a_date),  # fractions, NaN, infinities, out of range
    st.integers(max_value=-1), st.integers(min_value=LATEST + 1),
    st.sampled_from([10**400, -(10**400), 2**64, 2**53 + 1, 1e308]),
)
hostile_names = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.just(""), st.sampled_from([" ", "\t", "\n"]),
    st.lists(st.text(max_size=5), max_size=2), st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)
hostile_tenants = hostile_names | st.text(min_size=65) | st.sampled_from(["a b", "a\nb", "../x", "-x", "ten@nt"])
HOSTILE = {"exp": hostile_dates, "nbf": hostile_dates, "iat": hostile_dates, "sub": hostile_names,
           "tenant": hostile_tenants}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), chosen=st.sets(st.sampled_from(sorted(HOSTILE)), min_size=1),
       extra=st.dictionaries(st.sampled_from(["aud", "iss", "scope", "scp", "jti", "azp"]), json_values, max_size=2))
def test_a_signed_token_with_a_hostile_claim_is_a_401_never_an_error_never_accepted(auth, dev_idp, data, chosen,
                                                                                      extra):
    claims = {**good_claims(dev_idp), **extra}
    for name in chosen:
        claims[name] = data.draw(HOSTILE[name], label=name)

    err = refusal(auth, sign(dev_idp, claims))  # anything but AuthError fails the test (it would be a 500)

    assert err.status == 401
    assert err.reason in HOSTILE_REASONS | ({"wrong_issuer", "wrong_audience"} if extra else set())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sub=st.text(min_size=1, max_size=40).filter(str.strip),
       tenant=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
       lifetime=st.integers(60, 10**6), age=st.integers(0, 10**6), as_float=st.booleans())
def test_a_signed_token_with_well_typed_claims_is_accepted(auth, dev_idp, sub, tenant, lifetime, age, as_float):
    now = int(time.time())
    date = float if as_float else int  # an integral float (1700000000.0) is a date too
    claims = {**good_claims(dev_idp), "sub": sub, "tenant": tenant, "iat": date(now - age), "nbf": date(now - age),
              "exp": date(now + lifetime)}

    principal = verify(auth, sign(dev_idp, claims))

    assert (principal.tenant, principal.subject_hash) == (tenant, auth.subject_hash("jwt", sub))


MALFORMED = [  # the issue's three first, then their neighbours
    ("exp a 400-digit integer", {"exp": 10**400}),
    ("exp a numeric string", {"exp": "2000000000"}),
    ("sub empty", {"sub": ""}),
    ("nbf a numeric string", {"nbf": str(int(time.time()) - 10)}),
    ("iat true", {"iat": True}),
    ("exp a fraction", {"exp": 4_000_000_000.5}),  # far ahead: collected long before it runs
    ("exp past year 9999", {"exp": LATEST + 1}),
    ("sub blank", {"sub": "  "}),
    ("sub a number", {"sub": 42}),
    ("tenant empty", {"tenant": ""}),
    ("tenant not a name", {"tenant": "acme\nevil"}),
    ("tenant a list", {"tenant": ["acme"]}),
]


@pytest.mark.parametrize(("case", "override"), MALFORMED, ids=[c for c, _ in MALFORMED])
def test_a_claim_of_the_wrong_type_or_range_is_malformed(auth, dev_idp, case, override):
    err = refusal(auth, sign(dev_idp, {**good_claims(dev_idp), **override}))

    assert (err.status, err.reason, err.method) == (401, "malformed", "jwt")


def test_through_the_gateway_the_issue_tokens_are_401s_not_500s(memory_telemetry, dev_idp):
    auth = Authenticator(AuthSettings(issuer=dev_idp.issuer, audience=AUDIENCE))
    app = EchoApp()
    tokens = [sign(dev_idp, {**good_claims(dev_idp), **o}) for o in ({"exp": 10**400}, {"exp": "2000000000"},
                                                                      {"sub": ""})]
    with serve(GatewayMiddleware(app, GatewayConfig(routes=ROUTES), authenticator=auth), lifespan="off") as gw:
        answers = [httpx.post(gw.url + "/v1/echo", json={"model": "m"}, headers={"authorization": f"Bearer {t}"})
                   for t in tokens]
        good = httpx.post(gw.url + "/v1/echo", json={"model": "m"},
                          headers={"authorization": f"Bearer {sign(dev_idp, good_claims(dev_idp))}"})
    assert [(a.status_code, a.json()["error"]["code"]) for a in answers] == [(401, "malformed")] * 3
    assert good.status_code == 200 and app.calls == 1


# ---------------------------------------------------------------------------------------------- the tracker
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_wait_starts_at_the_last_allowed_failure_doubles_and_is_capped():
    clock = Clock()
    throttle = FailureThrottle(failures=3, window_s=60, max_backoff_s=10, capacity=10, clock=clock)
    waits = []
    for _ in range(8):
        assert throttle.retry_after("a") is None  # not waiting: this attempt is verified (and fails)
        throttle.failed("a")
        waits.append(throttle.retry_after("a"))
        clock.now += waits[-1] or 1
    assert waits == [None, None, 1, 2, 4, 8, 10, 10]


def test_a_quiet_window_forgives_and_other_keys_are_untouched():
    clock = Clock()
    throttle = FailureThrottle(failures=2, window_s=60, max_backoff_s=300, capacity=10, clock=clock)
    throttle.failed("a")
    throttle.failed("a")
    assert throttle.retry_after("a") == 1 and throttle.retry_after("b") is None
    clock.now += 1 + 60
    throttle.failed("a")  # a window after the wait ended: counted from one again
    assert throttle.retry_after("a") is None
    clock.now += 59
    throttle.failed("a")  # within the window of the previous failure: the second in a row
    assert throttle.retry_after("a") == 1


def test_the_tracker_stays_bounded_and_forgets_the_least_recent_failure_first():
    throttle = FailureThrottle(failures=1, window_s=60, max_backoff_s=300, capacity=100)
    throttle.failed("first")
    for n in range(10_000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
        assert len(throttle) <= 100
    assert throttle.retry_after("first") is None and throttle.retry_after("10.0.39.15") == 1


# ---------------------------------------------------------------------------------------------- throttling
def frozen(auth: Authenticator) -> Authenticator:
    """``auth`` with its trackers (as its settings built them) on a clock that stands still, so the
    first 1 s wait cannot run out on a loaded machine between two requests of a test."""
    for name in ("by_address", "by_key_id"):
        t = getattr(auth, name)
        if t is not None:
            setattr(auth, name, FailureThrottle(t.failures, t.window_s, t.max_backoff_s, t.capacity, clock=Clock()))
    return auth


def throttled_auth(keyring, **overrides) -> Authenticator:
    options = {"throttle_failures": 3, "throttle_window_s": 60, "throttle_max_backoff_s": 30, **overrides}
    auth = Authenticator(AuthSettings(api_keys_file=keyring.path, model_scopes={"*": ("inference",)}, **options))
    return frozen(auth)


def from_address(address: str) -> httpx.Client:
    """A client whose connections come from ``address`` (any 127.x.y.z reaches the loopback server)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def forged(key: str) -> str:
    """``key``'s id with a wrong secret."""
    return key[:17] + ("A" * 43 if key[17:] != "A" * 43 else "B" * 43)


def test_a_burst_of_failures_from_one_address_is_answered_429_and_others_are_served(memory_telemetry, keyring):
    auth = throttled_auth(keyring)
    app = EchoApp()
    wrong = [f"obs_{n:012x}_" + "A" * 43 for n in range(6)]  # distinct ids: only the address repeats
    with serve(GatewayMiddleware(app, GatewayConfig(routes=ROUTES), authenticator=auth), lifespan="off") as gw:
        url = gw.url + "/v1/echo"
        with from_address("127.0.0.3") as attacker, from_address("127.0.0.2") as other:
            burst = [attacker.post(url, json={"model": "m"}, headers={"authorization": f"Bearer {k}"}) for k in wrong]
            good_from_attacker = attacker.post(url, json={"model": "m"},
                                               headers={"authorization": f"Bearer {keyring.acme}"})
            good_elsewhere = other.post(url, json={"model": "m"}, headers={"authorization": f"Bearer {keyring.acme}"})

    assert [r.status_code for r in burst] == [401, 401, 401, 429, 429, 429]
    refused = burst[3]
    assert refused.json()["error"]["code"] == "auth_throttled" and refused.headers["retry-after"] == "1"
    assert good_from_attacker.status_code == 429  # refused before anything is verified
    assert good_elsewhere.status_code == 200 and good_elsewhere.json()["tenant"] == "acme"
    assert app.calls == 1

    settle(memory_telemetry)
    metrics = memory_telemetry.memory.metrics()
    assert point_value(metrics[names.AUTH_THROTTLED.name], **{names.AUTH_THROTTLE_KEY: "address"}) == 4
    assert point_value(metrics[names.AUTH_ATTEMPTS.name], **{names.AUTH_OUTCOME: "throttled"}) == 4
    assert point_value(metrics[names.GATEWAY_REJECTIONS.name], **{names.REJECTION_REASON: "auth_throttled"}) == 4
    assert_no_secrets(exported_text(memory_telemetry) + "".join(r.text for r in burst), [keyring.acme, *wrong])


def test_failures_naming_one_key_id_from_many_addresses_throttle_that_key_id_only(memory_telemetry, keyring):
    auth = throttled_auth(keyring)
    with serve(GatewayMiddleware(EchoApp(), GatewayConfig(routes=ROUTES), authenticator=auth), lifespan="off") as gw:
        url = gw.url + "/v1/echo"

        def post(address: str, key: str) -> httpx.Response:
            with from_address(address) as client:
                return client.post(url, json={"model": "m"}, headers={"authorization": f"Bearer {key}"})

        spread = [post(f"127.0.1.{n}", forged(keyring.acme)) for n in range(1, 5)]
        holder = post("127.0.2.1", keyring.acme)  # the key id waits, whoever presents it
        same_tenant_other_key = post("127.0.2.2", keyring.acme2)

    assert [r.status_code for r in spread] == [401, 401, 401, 429]
    assert spread[3].headers["retry-after"] == "1"
    assert holder.status_code == 429
    assert same_tenant_other_key.status_code == 200
    settle(memory_telemetry)
    throttled = memory_telemetry.memory.metrics()[names.AUTH_THROTTLED.name]
    assert point_value(throttled, **{names.AUTH_THROTTLE_KEY: "key_id"}) == 2
    assert point_value(throttled, **{names.AUTH_THROTTLE_KEY: "address"}) == 0


def test_a_forbidden_key_does_not_count_and_a_success_does_not_forgive(keyring):
    auth = throttled_auth(keyring)
    for _ in range(5):  # a valid credential without the scope: 403, not a failed authentication
        assert refusal(auth, keyring.globex, "10.0.0.1", ["inference"]).status == 403
    assert verify(auth, keyring.globex, "10.0.0.1").tenant == "globex"
    assert refusal(auth, forged(keyring.acme), "10.0.0.2").status == 401
    assert refusal(auth, forged(keyring.acme2), "10.0.0.2").status == 401
    assert verify(auth, keyring.acme, "10.0.0.2").tenant == "acme"
    assert refusal(auth, "obs_" + "0" * 12 + "_" + "A" * 43, "10.0.0.2").status == 401  # the third in a row
    err = refusal(auth, keyring.acme, "10.0.0.2")
    assert (err.status, err.reason, err.retry_after) == (429, "throttled", 1)


def test_jwts_are_throttled_by_address_only_so_nobody_can_lock_out_a_kid_or_a_subject(dev_idp):
    auth = frozen(Authenticator(AuthSettings(issuer=dev_idp.issuer, audience=AUDIENCE, throttle_failures=2)))
    expired = dev_idp.mint(SUBJECT, "acme", ttl=-600)  # the real kid and subject, refused
    for n in range(20):
        assert refusal(auth, expired, f"10.1.0.{n}").reason == "expired"
    assert verify(auth, dev_idp.mint(SUBJECT, "acme"), "10.1.1.1").tenant == "acme"
    assert refusal(auth, expired, "10.1.0.19").reason == "expired"  # its second: now it waits
    assert refusal(auth, dev_idp.mint(SUBJECT, "acme"), "10.1.0.19").status == 429


def test_throttling_can_be_turned_off(keyring):
    auth = throttled_auth(keyring, throttle_by=())
    for _ in range(20):
        assert refusal(auth, forged(keyring.acme), "10.2.0.1").status == 401
    assert verify(auth, keyring.acme, "10.2.0.1").tenant == "acme"


def test_10000_distinct_failing_addresses_and_key_ids_leave_bounded_trackers(keyring):
    auth = throttled_auth(keyring, throttle_max_keys=1000, throttle_failures=1)

    async def flood() -> None:
        for n in range(10_000):
            with pytest.raises(AuthError):
                await auth.authenticate(f"Bearer obs_{n:012x}_" + "A" * 43, (),
                                        f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")

    asyncio.run(flood())
    assert len(auth.by_address) == len(auth.by_key_id) == 1000
    assert refusal(auth, keyring.acme, "10.0.39.15").status == 429  # the latest are still remembered
    assert verify(auth, keyring.acme, "10.0.0.0").tenant == "acme"  # the earliest are forgotten
