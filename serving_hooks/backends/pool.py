"""A pool of OpenAI-compatible replicas (vLLM servers, other gateways) behind one model.

Each request goes to one replica chosen by the balancer (by default least outstanding requests with
two random choices weighed by each replica's recent time per output token; plain least outstanding,
or round robin: ``_balance.py``) among those that take requests now (``_health.py``:
active probes and passive outlier ejection). A failure before the first byte reached the caller
that the replica cannot have acted on (never connected, reset before any response header,
502/503/504) is retried on another replica, at most ``max_attempts`` attempts per request and
within a pool-wide retry budget; any other failure, and any failure once the answer has begun, is
the caller's (as with a single upstream: ``upstream.py``). With no replica able to take a request
the pool raises :class:`NoHealthyReplica` (503) so the catalog can use the model's fallbacks.

Telemetry: the request's GenAI CLIENT span, under it one CLIENT span per attempt (``POST``, with
``server.address``/``server.port`` of the replica and ``http.request.resend_count`` on retries;
the replica continues that span's trace), retries as ``observatory.fleet.retry`` events on the
GenAI span; per replica (labelled with its catalog name) attempts by outcome, duration,
outstanding requests, ejections and health state (``telemetry/names.py``, "fleet").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from loguru import logger
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.responses import Response

from gpt_observatory.serving_hooks._errors import ApiError
from gpt_observatory.serving_hooks.backends._balance import LatencyWeighted, LeastOutstanding, RetryBudget, RoundRobin
from gpt_observatory.serving_hooks.backends._health import FAILURES, Outliers, Replica
from gpt_observatory.serving_hooks.backends._pool_policy import Balancer, NoHealthyReplica, PoolPolicy, ReplicaSpec
from gpt_observatory.serving_hooks.backends.base import Call, ModelBackend, Readiness, bytes_per_token_estimate
from gpt_observatory.serving_hooks.backends.upstream import UNSENT, Exchange, UpstreamBackend, UpstreamFailure
from gpt_observatory.serving_hooks.inference import GenAIHooks
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.summed import SummedCounter

__all__ = ["Balancer", "NoHealthyReplica", "PoolPolicy", "ReplicaPool", "ReplicaSpec"]


class ReplicaPool(ModelBackend):
    """Serves ``model`` from ``replicas`` under ``policy`` (see the module docstring)."""

    def __init__(
        self,
        hooks: GenAIHooks,
        model: str,
        replicas: Sequence[ReplicaSpec],
        policy: PoolPolicy = PoolPolicy(),
        *,
        connect_timeout_s: float = 5.0,
        timeout_s: float = 60.0,
        max_connections: int = 256,
        forward_baggage_keys: Iterable[str] = (),
        forward_tracestate_keys: Iterable[str] = (),
    ) -> None:
        if not replicas:
            raise ValueError(f"model {model!r}: a replica pool needs at least one replica")
        seen = [r.name for r in replicas]
        if len(set(seen)) != len(seen):
            raise ValueError(f"model {model!r}: replica names must be unique, got {seen}")
        self.hooks, self.model, self.policy = hooks, model, policy
        self._replicas: list[Replica] = []
        for spec in replicas:
            backend = UpstreamBackend(
                hooks, spec.url, api_key=spec.api_key, connect_timeout_s=connect_timeout_s, timeout_s=timeout_s,
                max_connections=max_connections, forward_baggage_keys=forward_baggage_keys,
                forward_tracestate_keys=forward_tracestate_keys,
            )
            parts = urlsplit(backend.base_url)
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
            origin = f"{parts.scheme}://{parts.netloc}"
            probe = backend.base_url + "/models" if policy.probe_path is None else origin + policy.probe_path
            attrs = {names.FLEET_POOL: model, names.FLEET_REPLICA: spec.name}
            self._replicas.append(Replica(spec, backend, parts.hostname or "", port, probe, attrs))
        self._outliers = Outliers(policy, self._replicas)
        self._ewma = LatencyWeighted(policy.latency_decay_answers) if policy.balancer == "latency_weighted" else None
        self._balancer = self._ewma or (RoundRobin() if policy.balancer == "round_robin" else LeastOutstanding())
        self._budget = RetryBudget(policy.retry_ratio, policy.retry_min, policy.retry_window_s)
        self._pool_attrs = {names.FLEET_POOL: model}
        self._tracer = trace.get_tracer(__name__)
        meter = metrics.get_meter(__name__)
        m = names.FLEET_REPLICA_DURATION
        self._duration = meter.create_histogram(m.name, m.unit, m.description,
                                                explicit_bucket_boundaries_advisory=names.DURATION_BUCKETS)
        self._outstanding = SummedCounter.of(__name__, names.FLEET_REPLICA_OUTSTANDING, up_down=True)
        self._requests = SummedCounter.of(__name__, names.FLEET_REPLICA_REQUESTS)
        self._ejections = SummedCounter.of(__name__, names.FLEET_REPLICA_EJECTIONS)
        self._retries = SummedCounter.of(__name__, names.FLEET_RETRIES)
        self._denied = SummedCounter.of(__name__, names.FLEET_RETRIES_DENIED)
        self._unavailable = SummedCounter.of(__name__, names.FLEET_UNAVAILABLE)
        _watch_states(meter)
        self._probes: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle and state
    async def start(self) -> None:
        for replica in self._replicas:
            await replica.backend.start()
        _POOLS.add(self)
        if self.policy.probe_interval_s > 0:
            self._probes = asyncio.create_task(self._probe_loop(), name=f"probes-{self.model}")

    async def close(self) -> None:
        _POOLS.discard(self)
        if self._probes is not None:
            self._probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probes
            self._probes = None
        for replica in self._replicas:
            await replica.backend.close()

    def has_healthy(self) -> bool:
        """Whether some replica can take a request now."""
        now = time.monotonic()
        return any(r.available(now) for r in self._replicas)

    def states(self) -> Iterator[tuple[Replica, str]]:
        now = time.monotonic()
        return ((r, r.state(now)) for r in self._replicas)

    async def readiness(self) -> Readiness:
        replicas = {
            r.name: {"state": state, "url": r.backend.base_url, "outstanding": r.outstanding, "ejections": r.ejections}
            for r, state in self.states()
        }
        if self._ewma is not None:  # the balancer's view: seconds per output token, decayed as it reads it
            for r in self._replicas:
                replicas[r.name]["s_per_token"] = round(self._ewma.estimate(r), 6)
        healthy = sum(1 for r in replicas.values() if r["state"] == "healthy")
        info = {"model": self.model, "balancer": self.policy.balancer, "replicas": replicas}
        if healthy == len(replicas):
            return Readiness(True, "ok", info=info)
        detail = f"{healthy} of {len(replicas)} replicas of {self.model!r} healthy"
        return Readiness(bool(healthy), "degraded" if healthy else "unavailable", detail, info)

    def estimate_tokens(self, body: Mapping[str, Any]) -> int:
        return bytes_per_token_estimate(body)

    async def models(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        available = [r for r in self._replicas if r.available(now)]
        if not available:
            raise NoHealthyReplica.of(self.model, "every replica is ejected or failing its probes")
        error: ApiError | None = None
        for replica in available:
            try:
                return await replica.backend.models()
            except ApiError as e:
                error = e
        assert error is not None
        raise error

    # ------------------------------------------------------------------ requests
    async def handle(self, call: Call) -> Response:
        now = time.monotonic()
        candidates = [r for r in self._replicas if r.available(now)]
        if not candidates:
            self._unavailable.add(1, self._pool_attrs)
            raise NoHealthyReplica.of(self.model, "every replica is ejected or failing its probes")
        exchange = candidates[0].backend.begin(call)
        self._budget.request(now)
        attempt: _Attempt | None = None
        resend = 0
        tried: list[Replica] = []
        try:
            while True:
                replica = self._balancer.pick(candidates)
                if call.ctx is not None:  # the ledger's replica: the last one asked (its name: no credentials)
                    call.ctx.replica = replica.name
                attempt = _Attempt(self, replica, exchange, resend)
                try:
                    resp = await replica.backend.send(exchange, attempt.context)
                except UpstreamFailure as failure:
                    attempt.status = failure.status
                    attempt.finish(failure.outcome, failure.error_type)
                    tried.append(replica)
                    candidates = self._next(exchange, failure, tried, resend)
                    if not candidates:
                        raise self._give_up(exchange, failure) from None
                    resend += 1
                    continue
                attempt.status = resp.status
                exchange.on_settled = attempt.settled
                return await replica.backend.answer(exchange, resp)
        except BaseException as e:
            if attempt is not None:
                attempt.finish("cancelled" if isinstance(e, asyncio.CancelledError) else "error", type(e).__qualname__)
            exchange.gen.end(e)
            raise

    def _next(self, exchange: Exchange, failure: UpstreamFailure, tried: list[Replica], resend: int) -> list[Replica]:
        """The replicas a retry may go to after ``failure`` (none: no retry)."""
        if not failure.retryable or resend + 1 >= self.policy.max_attempts:
            return []
        now = time.monotonic()
        candidates = [r for r in self._replicas if r not in tried and r.available(now)]
        if not candidates:
            return []
        if not self._budget.try_retry(now):
            self._denied.add(1, self._pool_attrs)
            return []
        self._retries.add(1, {**self._pool_attrs, names.FLEET_OUTCOME: failure.outcome})
        trace.get_current_span(exchange.gen.context()).add_event(
            names.EVENT_FLEET_RETRY, {names.FLEET_REPLICA: tried[-1].name, names.FLEET_OUTCOME: failure.outcome,
                                      names.HTTP_REQUEST_RESEND_COUNT: resend + 1})
        return candidates

    def _give_up(self, exchange: Exchange, failure: UpstreamFailure) -> ApiError:
        error = exchange.give_up(failure)
        if failure.retryable and not self.has_healthy():  # nothing reached the caller: the fallbacks may take it
            self._unavailable.add(1, self._pool_attrs)
            return NoHealthyReplica.of(self.model, f"the last replica tried failed ({failure.outcome})")
        return error

    # ------------------------------------------------------------------ probes
    async def _probe_loop(self) -> None:
        while True:
            try:
                await asyncio.gather(*(self._probe(r) for r in self._replicas))
            except Exception as e:  # the boundary: a bug here must not end the probes for good
                logger.warning("probing the replicas of model {} failed ({}); trying again", self.model,
                               type(e).__name__)
            await asyncio.sleep(self.policy.probe_interval_s)

    async def _probe(self, replica: Replica) -> None:
        passed = await replica.backend.probe(replica.probe_url, self.policy.probe_timeout_s)
        if self._outliers.probed(replica, passed, time.monotonic()):
            verb = "takes requests again" if passed else "is out: its probes fail"
            logger.info("replica {} of model {} {} ({})", replica.name, self.model, verb, replica.backend.base_url)


class _Attempt:
    """One attempt on one replica: its CLIENT span, its share of the replica's outstanding count, and
    (``latency_weighted``) its time per output token for the replica's estimate."""

    __slots__ = ("context", "done", "pool", "replica", "span", "start", "status", "tokens")

    def __init__(self, pool: ReplicaPool, replica: Replica, exchange: Exchange, resend: int) -> None:
        self.pool, self.replica, self.status, self.done = pool, replica, None, False
        self.tokens: int | None = None  # the answer's output tokens, once it is over
        attrs: dict[str, Any] = {
            names.HTTP_REQUEST_METHOD: "POST", names.SERVER_ADDRESS: replica.address, **replica.attrs,
        }
        if replica.port is not None:
            attrs[names.SERVER_PORT] = replica.port
        if resend:
            attrs[names.HTTP_REQUEST_RESEND_COUNT] = resend
        parent = exchange.gen.context()
        self.span = pool._tracer.start_span(names.SPAN_FLEET_ATTEMPT, parent, SpanKind.CLIENT, attrs)
        self.context = trace.set_span_in_context(self.span, parent)
        replica.outstanding += 1
        pool._outstanding.add(1, replica.attrs)
        self.start = time.perf_counter()

    def settled(self, failure: str | None, output_tokens: int | None) -> None:
        self.tokens = output_tokens
        if failure == UNSENT:  # the caller left, or the response was dropped: the replica did its part
            self.finish("cancelled")
            return
        self.finish("answer_failed" if failure is not None else "ok", failure)

    def finish(self, outcome: str, error_type: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        pool, replica, span = self.pool, self.replica, self.span
        if outcome == "ok" and self.status is not None and self.status >= 400:
            outcome = "client_error"
        replica.outstanding -= 1
        pool._outstanding.add(-1, replica.attrs)
        attrs = replica.with_outcome(outcome)
        pool._requests.add(1, attrs)
        elapsed = time.perf_counter() - self.start
        pool._duration.record(elapsed, attrs)
        if pool._ewma is not None and (outcome == "ok" or outcome in FAILURES):
            # Seconds per output token (see _balance.py): the whole answer, streams to their end, over
            # its tokens (usage, else the chunks relayed; unknown: the answer as one). A failure only
            # raises the estimate (a replica that fails fast must not look fast); a 4xx refusal and a
            # cancelled attempt say nothing of its speed.
            per_token = elapsed / max(1, self.tokens or 1)
            pool._ewma.observe(replica, per_token, raise_only=outcome != "ok")
        ejected_s = pool._outliers.record(replica, outcome, time.monotonic())
        if span.is_recording():
            span.set_attribute(names.FLEET_OUTCOME, outcome)
            if self.status is not None:
                span.set_attribute(names.HTTP_RESPONSE_STATUS_CODE, self.status)
            if error_type is not None and outcome not in ("ok", "client_error"):
                span.set_attribute(names.ERROR_TYPE, error_type)
                span.set_status(Status(StatusCode.ERROR, error_type))
        if ejected_s is not None:
            pool._ejections.add(1, attrs)
            span.add_event(names.EVENT_FLEET_EJECTED, {names.FLEET_REPLICA: replica.name, names.FLEET_EJECTION_SECONDS: ejected_s})
            logger.warning("replica {} of model {} ejected for {:g} s after {} failures in a row (last: {})",
                           replica.name, pool.model, ejected_s, pool.policy.consecutive_errors, outcome)
        span.end()


# ------------------------------------------------------------------ health state gauge (one for all pools)
_POOLS: weakref.WeakSet[ReplicaPool] = weakref.WeakSet()
_watched: set[int] = set()


def _watch_states(meter: metrics.Meter) -> None:
    """One observable gauge per meter, reading every started pool (an observable instrument keeps its
    first callbacks: one per pool would report the first pool only)."""
    if id(meter) in _watched:
        return
    _watched.add(id(meter))
    m = names.FLEET_REPLICA_STATE
    meter.create_observable_gauge(m.name, [_observe_states], m.unit, m.description)


def _observe_states(options: CallbackOptions) -> Iterator[Observation]:
    for pool in list(_POOLS):
        for replica, state in pool.states():
            for s in names.FLEET_STATES:
                yield Observation(1 if s == state else 0, {**replica.attrs, names.FLEET_STATE: s})
