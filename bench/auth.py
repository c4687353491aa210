"""Cost of one credential verification: JWT (RS256/ES256/EdDSA, JWKS cached) vs API key,
with telemetry off and on, beside PyJWT's bare ``decode`` as the floor.

    .venv/bin/python bench/auth.py [--rounds 5] [--seconds 0.3]

Every figure is the best of ``rounds`` runs of about ``seconds`` each, measured in this one
process, interleaved, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable

import jwt
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from gpt_observatory.serving_hooks.apikeys import ApiKeyStore
from gpt_observatory.serving_hooks.auth import Authenticator, AuthSettings
from gpt_observatory.serving_hooks.idp import DevIdP


class _Discard(SpanExporter):
    def export(self, spans: tuple[ReadableSpan, ...]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _telemetry_on() -> dict:
    """SDK providers as an app runs them (batched span export, metrics aggregated in memory)."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_Discard(), max_queue_size=65536))
    return {"tracer_provider": tracer_provider, "meter_provider": MeterProvider(metric_readers=[InMemoryMetricReader()])}


async def _per_call(fn: Callable[[], Awaitable[object]], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            await fn()
        n += 50
    return elapsed / n


async def main(rounds: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp, DevIdP(tmp) as idp:
        keys = ApiKeyStore(f"{tmp}/api-keys.json")
        api_key, _ = keys.create("acme", ["inference"])
        settings = AuthSettings(issuer=idp.issuer, audience=idp.audience, api_keys_file=keys.path)
        off = Authenticator(settings)  # OTel API without an SDK: no-op spans and instruments
        on = Authenticator(settings, **_telemetry_on())
        # Every request verified in full (signature included), as when each request has a new token.
        uncached = Authenticator(settings.model_copy(update={"jwt_cache_size": 0}), **_telemetry_on())
        tokens = {}
        for algorithm in ("RS256", "ES256", "EdDSA"):
            if algorithm != "RS256":
                idp.rotate(algorithm=algorithm)
            tokens[algorithm] = idp.mint("bench-user", "acme", ["inference"])
        for auth in (off, on, uncached):  # fill the JWKS caches (one fetch each), then no more IdP traffic
            for token in tokens.values():
                await auth.authenticate(f"Bearer {token}", ["inference"])
        fetches = idp.hits["/jwks.json"]

        rs256_key = next(k for k in jwt.PyJWKSet.from_dict(idp.jwks()).keys if k.key_id == jwt.get_unverified_header(
            tokens["RS256"])["kid"])

        async def bare_pyjwt() -> object:
            return jwt.decode(tokens["RS256"], rs256_key, algorithms=["RS256"], audience=idp.audience,
                              issuer=idp.issuer)

        cases: dict[str, Callable[[], Awaitable[object]]] = {"PyJWT decode only (RS256)": bare_pyjwt}
        for label, auth in (("off", off), ("on", on), ("on, no token cache", uncached)):
            for algorithm, token in tokens.items():
                header = f"Bearer {token}"
                cases[f"JWT {algorithm}, telemetry {label}"] = lambda a=auth, h=header: a.authenticate(h, ["inference"])
            if auth is not uncached:
                cases[f"API key, telemetry {label}"] = lambda a=auth: a.authenticate(f"Bearer {api_key}", ["inference"])
        best = {name: float("inf") for name in cases}
        for _ in range(rounds):
            for name, fn in cases.items():
                best[name] = min(best[name], await _per_call(fn, seconds))
        assert idp.hits["/jwks.json"] == fetches, "a verification went to the IdP"

    width = max(map(len, best))
    print(f"{'case':<{width}}  µs/verification  verifications/s")
    for name, t in best.items():
        print(f"{name:<{width}}  {t * 1e6:15.1f}  {1 / t:15,.0f}")
    print()
    ratios = {
        "JWT RS256 / API key (telemetry on, token cache)": ("JWT RS256, telemetry on", "API key, telemetry on"),
        "JWT RS256 / API key (telemetry on, no token cache)": (
            "JWT RS256, telemetry on, no token cache", "API key, telemetry on"),
        "JWT RS256 no token cache / bare PyJWT decode": (
            "JWT RS256, telemetry on, no token cache", "PyJWT decode only (RS256)"),
        "telemetry on / off, JWT RS256 (token cache)": ("JWT RS256, telemetry on", "JWT RS256, telemetry off"),
        "telemetry on / off, API key": ("API key, telemetry on", "API key, telemetry off"),
    }
    width = max(map(len, ratios))
    for label, (a, b) in ratios.items():
        print(f"{label:<{width}}  {best[a] / best[b]:6.2f}x")
    print(f"IdP JWKS requests during the measurement: {idp.hits['/jwks.json'] - fetches}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="best of this many runs per case")
    parser.add_argument("--seconds", type=float, default=0.3, help="duration of one run")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.seconds))
