"""A fake vLLM metrics exporter: ``GET /metrics`` in Prometheus text format with vLLM's own names
(those of vLLM 0.10's V1 engine, ``dashboards/series.py``) and plausible values.

vLLM renders its metrics with prometheus_client, so this does too, with the same names, kinds,
labels (``model_name``, ``engine``) and bucket boundaries. Every scrape advances a small simulated
engine: a few requests finish (queue, prefill and decode times drawn from a seeded generator),
tokens are counted, now and then a request is preempted, and the scheduler gauges move. Nothing
else: no API. Run it alone with ``python -m tests.dashboards.fake_vllm --port P``.
"""

from __future__ import annotations

import argparse
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gpt_observatory.dashboards import series as s

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
_LATENCY = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
            960.0, 1920.0, 7680.0)  # vLLM's request_latency_buckets
_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
         80.0, 160.0, 640.0, 2560.0)


class FakeVllm:
    """The registry of vLLM-named metrics and, optionally, a thread serving it on loopback."""

    def __init__(self, model: str = MODEL, seed: int = 18) -> None:
        self.registry = CollectorRegistry()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        labels = [s.VLLM_MODEL, s.VLLM_ENGINE]
        r = self.registry

        def name(series: str, suffix: str = "") -> str:  # prometheus_client adds a counter's _total itself
            return series.removesuffix(suffix)

        self.running = Gauge(s.VLLM_RUNNING, "Number of requests in model execution batches.", labels, registry=r)
        self.waiting = Gauge(s.VLLM_WAITING, "Number of requests waiting to be processed.", labels, registry=r)
        self.kv_cache = Gauge(s.VLLM_KV_CACHE_USAGE, "KV-cache usage. 1 means 100 percent usage.", labels,
                              registry=r)
        self.preemptions = Counter(name(s.VLLM_PREEMPTIONS, "_total"), "Cumulative number of preemption from the "
                                   "engine.", labels, registry=r)
        self.prompt_tokens = Counter(name(s.VLLM_PROMPT_TOKENS, "_total"), "Number of prefill tokens processed.",
                                     labels, registry=r)
        self.generation_tokens = Counter(name(s.VLLM_GENERATION_TOKENS, "_total"),
                                         "Number of generation tokens processed.", labels, registry=r)
        self.ttft = Histogram(s.VLLM_TTFT, "Histogram of time to first token in seconds.", labels, buckets=_TTFT,
                              registry=r)
        self.phases = {
            h: Histogram(h, f"Histogram of {what}.", labels, buckets=_LATENCY, registry=r)
            for h, what in s.VLLM_HISTOGRAMS.items() if h != s.VLLM_TTFT
        }
        self.labels = (model, "0")
        for metric in (self.running, self.waiting, self.kv_cache, self.preemptions, self.prompt_tokens,
                       self.generation_tokens, self.ttft, *self.phases.values()):
            metric.labels(*self.labels)  # as vLLM does at start (make_per_engine): every series exists at 0
        self.scrapes = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def step(self) -> None:
        """What the engine did since the last scrape: a few requests finished, one preempted now and then."""
        rnd, at = self._random, self.labels
        with self._lock:
            self.scrapes += 1
            for _ in range(rnd.randint(2, 6)):
                queue, prefill, decode = rnd.uniform(0.0, 0.4), rnd.uniform(0.02, 0.3), rnd.uniform(0.5, 4.0)
                prompt, generated = rnd.randint(50, 2000), rnd.randint(20, 400)
                self.phases[s.VLLM_QUEUE_TIME].labels(*at).observe(queue)
                self.phases[s.VLLM_PREFILL_TIME].labels(*at).observe(prefill)
                self.phases[s.VLLM_DECODE_TIME].labels(*at).observe(decode)
                self.phases[s.VLLM_E2E].labels(*at).observe(queue + prefill + decode)
                self.ttft.labels(*at).observe(queue + prefill)
                self.prompt_tokens.labels(*at).inc(prompt)
                self.generation_tokens.labels(*at).inc(generated)
            if self.scrapes % 3 == 0:
                self.preemptions.labels(*at).inc()
            self.running.labels(*at).set(rnd.randint(4, 64))
            self.waiting.labels(*at).set(rnd.randint(0, 12))
            self.kv_cache.labels(*at).set(round(rnd.uniform(0.35, 0.97), 3))

    def exposition(self) -> bytes:
        """The next scrape's text (the engine steps first)."""
        self.step()
        with self._lock:
            return generate_latest(self.registry)

    # ------------------------------------------------------------------ serving in a thread
    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> FakeVllm:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = fake.exposition()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-vllm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeVllm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    FakeVllm().start(args.port)
    threading.Event().wait()


if __name__ == "__main__":
    main()
