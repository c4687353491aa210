"""The pipeline's telemetry: counters, gauges and spans, through the global OpenTelemetry API.

Created once per meter provider (a flow run asks for them at its start), never at import.
Evaluation gauges reach the Pushgateway when that backend is configured: the telemetry core
pushes on its interval and at flush, which :func:`flush` triggers at the end of a flow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import metrics, trace

from gpt_observatory import telemetry
from gpt_observatory.flows.gates import EvalSummary
from gpt_observatory.flows.history import Decision
from gpt_observatory.telemetry import names

_SCOPE = "observatory.flows"


def ensure_telemetry() -> None:
    """Configure telemetry from settings unless this process already has an SDK pipeline.

    Prefect records flow- and task-run spans only when an SDK tracer provider is set in the
    flow-run process; a worker-started process has none until this runs.
    """
    from opentelemetry.sdk.trace import TracerProvider

    if telemetry.current() is None and not isinstance(trace.get_tracer_provider(), TracerProvider):
        telemetry.configure()


def flush() -> None:
    handle = telemetry.current()
    if handle is not None:
        handle.force_flush(timeout_millis=10_000)


def tracer() -> trace.Tracer:
    return trace.get_tracer(_SCOPE)


@contextmanager
def root_span(flow_name: str) -> Iterator[None]:
    """A span for the flow run when Prefect's own is not recording (telemetry configured late).

    Subflow- and task-run spans then nest under it, so one pipeline run stays one trace.
    """
    if trace.get_current_span().is_recording():
        yield
        return
    with tracer().start_as_current_span(names.SPAN_PIPELINE_RUN, attributes={names.PIPELINE_FLOW: flow_name}):
        yield


class PipelineInstruments:
    """Counters and gauges of the pipeline, bound to one meter provider."""

    def __init__(self, provider: metrics.MeterProvider) -> None:
        meter = provider.get_meter(_SCOPE)

        def counter(m: names.Metric) -> metrics.Counter:
            return meter.create_counter(m.name, unit=m.unit, description=m.description)

        def gauge(m: names.Metric) -> metrics._Gauge:
            return meter.create_gauge(m.name, unit=m.unit, description=m.description)

        self.provider = provider
        self.runs = counter(names.PIPELINE_RUNS)
        self.registrations = counter(names.PIPELINE_REGISTRATIONS)
        self.decisions = counter(names.PIPELINE_DECISIONS)
        self.canary_analyses = counter(names.CANARY_ANALYSES)
        self.last_promotion = gauge(names.PIPELINE_LAST_PROMOTION)
        self.train_duration = gauge(names.PIPELINE_TRAIN_DURATION)
        self.eval_gauges = {
            "heldout_loss": gauge(names.EVAL_LOSS),
            "perplexity": gauge(names.EVAL_PERPLEXITY),
            "latency_p50_s": gauge(names.EVAL_LATENCY_P50),
            "latency_p95_s": gauge(names.EVAL_LATENCY_P95),
            "golden_pass_rate": gauge(names.EVAL_GOLDEN_PASS_RATE),
        }

    def run(self, flow: str, ok: bool) -> None:
        self.runs.add(1, {names.PIPELINE_FLOW: flow, names.PIPELINE_OUTCOME: "completed" if ok else "failed"})

    def registered(self, model: str) -> None:
        self.registrations.add(1, {names.MODEL_NAME: model})

    def trained(self, model: str, seconds: float) -> None:
        self.train_duration.set(seconds, {names.MODEL_NAME: model})

    def evaluated(self, model: str, version: str, summary: EvalSummary) -> None:
        attrs = {names.MODEL_NAME: model, names.MODEL_VERSION: version}
        for field, instrument in self.eval_gauges.items():
            instrument.set(float(getattr(summary, field)), attrs)

    def decided(self, d: Decision) -> None:
        """Count ``d`` and record it as a span (the reason is gate figures, never content)."""
        attrs = {
            names.PIPELINE_DECISION: d.decision,
            names.MODEL_NAME: d.model,
            names.PIPELINE_TO_VERSION: d.version,
            names.PIPELINE_FROM_VERSION: d.from_version or "",
            names.PIPELINE_REASON: d.reason[:1000],
        }
        with tracer().start_as_current_span(names.SPAN_PIPELINE_DECISION, attributes=attrs):
            pass
        self.decisions.add(1, {names.PIPELINE_DECISION: d.decision, names.MODEL_NAME: d.model})
        if d.decision in ("promoted", "approved", "rolled_back"):
            self.last_promotion.set(time.time(), {names.MODEL_NAME: d.model})

    def analysed(self, flow: str, model: str, verdict: str) -> None:
        """Count a finished canary or guard analysis (flows/canary.py)."""
        self.canary_analyses.add(1, {names.PIPELINE_FLOW: flow, names.MODEL_NAME: model, names.CANARY_VERDICT: verdict})


_lock = threading.Lock()
_instruments: PipelineInstruments | None = None


def instruments() -> PipelineInstruments:
    """The instruments for the current global meter provider (made on first use after a change)."""
    global _instruments
    provider = metrics.get_meter_provider()
    with _lock:
        if _instruments is None or _instruments.provider is not provider:
            _instruments = PipelineInstruments(provider)
        return _instruments
