"""Must show (issue 16): three real replica processes behind the gateway under load; one is killed
with SIGKILL mid-load. No request that had not received a byte fails (each goes to another
replica), the dead one is ejected within the configured thresholds, and once it is started again
on the same port the probes readmit it and it takes requests again."""

from __future__ import annotations

import asyncio
import threading

import aiohttp

from gpt_observatory.serving_hooks.app import create_app, served_models
from gpt_observatory.serving_hooks.backends.base import ModelRouter
from gpt_observatory.serving_hooks.backends.pool import PoolPolicy, ReplicaPool, ReplicaSpec
from gpt_observatory.serving_hooks.inference import GenAIHooks
from gpt_observatory.serving_hooks.settings import load
from gpt_observatory.telemetry import names
from tests.serving_hooks.replica_procs import replicas, wait_until
from tests.serving_hooks.support import point_value, serve, settle

CONCURRENCY = 12
POLICY = PoolPolicy(consecutive_errors=3, base_ejection_s=60.0, max_ejected_share=0.34, probe_interval_s=0.2,
                    healthy_threshold=2, unhealthy_threshold=2, max_attempts=3, retry_min=100)


class Load:
    """Closed-loop callers in a thread of their own, half of them streaming, counting how each request ended."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.ok = self.failed_before_a_byte = self.cut_after_bytes = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def total(self) -> int:
        return self.ok + self.failed_before_a_byte + self.cut_after_bytes

    async def _run(self) -> None:
        headers = {"authorization": f"Bearer {self.key}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            await asyncio.gather(*(self._caller(session, i % 2 == 1) for i in range(CONCURRENCY)))

    async def _caller(self, session: aiohttp.ClientSession, stream: bool) -> None:
        body = {"model": "up-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": stream}
        while not self._stop.is_set():
            try:
                async with session.post(self.url, json=body) as r:
                    if r.status != 200:  # the gateway sent nothing of an answer: the pool's failure
                        self.failed_before_a_byte += 1
                        self.errors.append(f"{r.status} {await r.text()}")
                        continue
                    text = await r.text()
            except aiohttp.ClientError as e:
                self.failed_before_a_byte += 1
                self.errors.append(repr(e))
                continue
            if stream and (not text.rstrip().endswith("data: [DONE]") or '"error"' in text):
                self.cut_after_bytes += 1  # the answer had begun on the killed replica: allowed to fail
            else:
                self.ok += 1


def test_a_replica_killed_mid_load_fails_no_unstarted_request_and_is_readmitted(memory_telemetry, keyring, tmp_path):
    with replicas(3, delays_ms=[20, 20, 20], log_dir=tmp_path) as procs:
        settings = load(backend="upstream", upstream_url=procs[0].url, upstream_models=["up-model"],
                        api_keys_file=keyring.path, upstream_timeout_s=5.0)
        hooks = GenAIHooks("client", models=served_models(settings))
        specs = [ReplicaSpec(p.url, f"replica-{i}") for i, p in enumerate(procs)]
        pool = ReplicaPool(hooks, "up-model", specs, POLICY, connect_timeout_s=1.0, timeout_s=5.0)

        def state(name: str) -> str:
            return dict((r.name, s) for r, s in pool.states())[name]

        def attempts(replica: str, outcome: str | None = None) -> float:
            points = memory_telemetry.memory.metrics().get(names.FLEET_REPLICA_REQUESTS.name, [])
            extra = {names.FLEET_OUTCOME: outcome} if outcome else {}
            return point_value(points, **{names.FLEET_REPLICA: replica, **extra})

        with serve(create_app(settings, router=ModelRouter({"champion": pool}))) as served, \
                Load(served.v1 + "/chat/completions", keyring.acme) as load_:
            wait_until(lambda: load_.total >= 100, 30)
            assert attempts("replica-1", "ok") > 0
            procs[1].kill()
            killed_at = load_.total
            ejected_in = wait_until(lambda: state("replica-1") != "healthy", 5, step=0.01)
            wait_until(lambda: load_.total >= killed_at + 200, 30)  # load goes on over two replicas

            procs[1].start()  # the same port again
            served_before = attempts("replica-1", "ok")
            readmitted_in = wait_until(lambda: state("replica-1") == "healthy", 10, step=0.02)
            wait_until(lambda: attempts("replica-1", "ok") > served_before + 10, 30)  # it takes requests again
        settle(memory_telemetry)

    assert load_.failed_before_a_byte == 0, load_.errors[:5]
    assert load_.ok > 400
    # Ejected on its own failures, as soon as the threshold allowed (connections refused come at once).
    assert ejected_in < 2.0
    metrics = memory_telemetry.memory.metrics()
    ejections = metrics[names.FLEET_REPLICA_EJECTIONS.name]
    assert point_value(ejections, **{names.FLEET_REPLICA: "replica-1"}) == 1
    assert point_value(ejections) == 1  # the others never were
    failures = sum(attempts("replica-1", o) for o in ("connect_error", "reset", "error"))
    # At most the threshold plus those already in flight on it when it died, never the whole load.
    assert POLICY.consecutive_errors <= failures <= POLICY.consecutive_errors + CONCURRENCY
    assert point_value(metrics[names.FLEET_RETRIES.name]) >= failures - load_.cut_after_bytes
    # Readmitted by the probes, well before its 60 s ejection ran out.
    assert readmitted_in < 5.0
