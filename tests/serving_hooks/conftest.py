"""Fixtures for the serving-hooks tests: a real development IdP on loopback, OTel in memory."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gpt_observatory.serving_hooks.idp import DevIdP

AUDIENCE = "observatory"
CLIENT = ("svc-client", "svc-client-secret", "acme", ("inference", "admin"))


@pytest.fixture(scope="module")
def dev_idp(tmp_path_factory) -> Iterator[DevIdP]:
    """A development IdP served by uvicorn on loopback, shared by a test module (do not rotate it)."""
    with DevIdP(tmp_path_factory.mktemp("idp"), audience=AUDIENCE) as idp:
        idp.register_client(*CLIENT)
        yield idp


@pytest.fixture
def fresh_idp(tmp_path) -> Iterator[DevIdP]:
    """A development IdP of the test's own, free to rotate keys."""
    with DevIdP(tmp_path / "fresh-idp", audience=AUDIENCE) as idp:
        yield idp


@dataclass
class Otel:
    """SDK providers whose spans and metrics stay in memory, handed to instrumentation directly."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self, name: str | None = None) -> list[Any]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        return [
            p
            for rm in (data.resource_metrics if data else ())
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == metric
            for p in m.data.data_points
        ]


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(tracer_provider, meter_provider, exporter, reader)
    tracer_provider.shutdown()
    meter_provider.shutdown()


# ------------------------------------------------------------------ gateway, app and proxy (issue 4)
@pytest.fixture
def memory_telemetry():
    """The global telemetry pipeline on the ``memory`` backend (spans readable as soon as they end);
    per test, since the root conftest shuts telemetry down after each test. Build apps after it."""
    from gpt_observatory import telemetry
    return telemetry.configure(
        "observatory-gateway-tests", traces_exporter=["memory"], metrics_exporter=["memory"],
        logs_exporter=["memory"], gpu_enabled=False,
    )


@dataclass
class KeyRing:
    """An API-key file with one key per tenant: ``acme`` may use the model, ``globex`` lacks the scope."""

    path: Any
    acme: str
    acme2: str
    globex: str

    @property
    def all(self) -> tuple[str, ...]:
        return (self.acme, self.acme2, self.globex)


@pytest.fixture(scope="module")
def keyring(tmp_path_factory) -> KeyRing:
    from gpt_observatory.serving_hooks.apikeys import ApiKeyStore

    path = tmp_path_factory.mktemp("keys") / "api-keys.json"
    store = ApiKeyStore(path)
    acme, _ = store.create("acme", ["inference"])
    acme2, _ = store.create("acme", ["inference"])
    globex, _ = store.create("globex", [])
    return KeyRing(path, acme, acme2, globex)


@pytest.fixture(scope="module")
def upstream_peer():
    """The fixed local OpenAI-compatible upstream (``tests/serving_hooks/upstream_peer.py``)."""
    from tests.serving_hooks.upstream_peer import UpstreamPeer

    with UpstreamPeer() as peer:
        yield peer
