"""The global providers are set once per process; ``configure()`` and ``shutdown()`` swap what
stands behind them, and every tracer, meter and instrument taken earlier follows."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from opentelemetry import _logs, metrics, trace
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gpt_observatory import telemetry
from gpt_observatory.telemetry import _globals

MEMORY = {"traces_exporter": ["memory"], "metrics_exporter": ["memory"], "logs_exporter": ["memory"],
          "gpu_enabled": False}
REPO = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: "before the first configure()" means before it in the process.
_BEFORE_THE_FIRST_CONFIGURE = textwrap.dedent('''
    import json
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import Observation

    tracer = trace.get_tracer("early")              # the API's own proxies: nothing is set yet
    meter = metrics.get_meter("early")
    counter = meter.create_counter("test.early.requests")
    histogram = meter.create_histogram("test.early.duration", unit="s")
    meter.create_observable_gauge("test.early.level", callbacks=[lambda options: [Observation(7.0)]])

    from gpt_observatory import telemetry

    MEMORY = {"traces_exporter": ["memory"], "metrics_exporter": ["memory"], "logs_exporter": ["none"],
              "gpu_enabled": False}

    def record(tag):
        with tracer.start_as_current_span("span-" + tag) as span:
            counter.add(1, {"tag": tag})
            histogram.record(0.5, {"tag": tag})
            return span.is_recording()

    def seen(handle):
        got = handle.memory.metrics()
        return {
            "spans": [s.name for s in handle.memory.spans()],
            "counter": sorted((p.attributes["tag"], p.value) for p in got.get("test.early.requests", [])),
            "histogram": sorted((p.attributes["tag"], p.count) for p in got.get("test.early.duration", [])),
            "gauge": [p.value for p in got.get("test.early.level", [])],
        }

    out = {"before": record("before")}
    first = telemetry.configure("first", **MEMORY)
    record("first")
    second = telemetry.configure("second", **MEMORY)   # other settings: the first is shut down
    record("second")
    out["first"], out["second"] = seen(first), seen(second)
    telemetry.shutdown()
    out["after_shutdown"] = record("off")
    third = telemetry.configure("third", **MEMORY)
    record("third")
    out["third"] = seen(third)
    print(json.dumps(out))
''')


def test_tracers_and_instruments_taken_before_the_first_configure_follow_each_configuration():
    run = subprocess.run([sys.executable, "-c", _BEFORE_THE_FIRST_CONFIGURE], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])

    assert out["before"] is False  # nothing stood behind: a no-op span
    assert out["first"] == {"spans": ["span-first"], "counter": [["first", 1]], "histogram": [["first", 1]],
                            "gauge": [7.0]}
    assert out["second"] == {"spans": ["span-second"], "counter": [["second", 1]], "histogram": [["second", 1]],
                             "gauge": [7.0]}
    assert out["after_shutdown"] is False
    assert out["third"] == {"spans": ["span-third"], "counter": [["third", 1]], "histogram": [["third", 1]],
                            "gauge": [7.0]}


def test_a_provider_other_code_set_first_is_kept_and_configure_says_so():
    script = textwrap.dedent('''
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        theirs = TracerProvider()
        trace.set_tracer_provider(theirs)
        from gpt_observatory import telemetry
        handle = telemetry.configure("late", traces_exporter=["memory"], metrics_exporter=["memory"],
                                     logs_exporter=["none"], gpu_enabled=False)
        assert trace.get_tracer_provider() is theirs
        with handle.tracer("own").start_as_current_span("through-the-handle"):
            pass
        print([s.name for s in handle.memory.spans()])
    ''')
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "['through-the-handle']" in run.stdout
    assert "global OpenTelemetry provider for traces (opentelemetry.sdk.trace.TracerProvider)" in run.stderr
    assert "metrics (" not in run.stderr  # the others were free and are ours


def test_what_was_taken_under_one_configuration_reports_to_the_next_and_not_the_first():
    first = telemetry.configure("first", **MEMORY)
    tracer = trace.get_tracer("under-first")
    meter = metrics.get_meter("under-first")
    counter = meter.create_counter("test.follow.requests")
    active = meter.create_up_down_counter("test.follow.active")
    histogram = meter.create_histogram("test.follow.duration", unit="s", explicit_bucket_boundaries_advisory=[1, 2])
    gauge = meter.create_gauge("test.follow.loss")
    meter.create_observable_counter("test.follow.observed", callbacks=[lambda options: [Observation(3)]])
    logger = _logs.get_logger("under-first")

    def record(tag: str) -> None:
        with tracer.start_as_current_span(f"span-{tag}"):
            counter.add(2, {"tag": tag})
            active.add(-1, {"tag": tag})
            histogram.record(1.5, {"tag": tag})
            gauge.set(0.25, {"tag": tag})
            logger.emit(body=f"log-{tag}")

    record("first")
    second = telemetry.configure("second", **MEMORY)
    record("second")

    for handle, tag in ((first, "first"), (second, "second")):
        got = handle.memory.metrics()
        assert [s.name for s in handle.memory.spans()] == [f"span-{tag}"]
        assert [r.log_record.body for r in handle.memory.logs() if str(r.log_record.body).startswith("log-")] == [
            f"log-{tag}"]
        assert [(dict(p.attributes), p.value) for p in got["test.follow.requests"]] == [({"tag": tag}, 2)]
        assert [(dict(p.attributes), p.value) for p in got["test.follow.active"]] == [({"tag": tag}, -1)]
        assert [(p.count, tuple(p.explicit_bounds)) for p in got["test.follow.duration"]] == [(1, (1, 2))]
        assert [p.value for p in got["test.follow.loss"]] == [0.25]
        assert [p.value for p in got["test.follow.observed"]] == [3]  # registered again on the new meter
    (span,) = second.memory.spans()
    assert span.resource.attributes["service.name"] == "second"


def test_after_shutdown_they_are_no_ops_and_the_next_configure_picks_them_up():
    telemetry.configure("on", **MEMORY)
    tracer = trace.get_tracer("across-shutdown")
    counter = metrics.get_meter("across-shutdown").create_counter("test.shutdown.requests")
    telemetry.shutdown()

    assert trace.get_tracer_provider().behind is None and metrics.get_meter_provider().behind is None
    with tracer.start_as_current_span("nowhere") as span:
        counter.add(1)
        assert not span.is_recording()

    again = telemetry.configure("again", **MEMORY)
    with tracer.start_as_current_span("somewhere") as span:
        counter.add(1)
        assert span.is_recording()
    assert [s.name for s in again.memory.spans()] == ["somewhere"]
    assert [p.value for p in again.memory.metrics()["test.shutdown.requests"]] == [1]


def test_the_globals_are_set_once_and_only_what_stands_behind_them_changes():
    telemetry.configure("one", **MEMORY)
    providers = (trace.get_tracer_provider(), metrics.get_meter_provider(), _logs.get_logger_provider())
    assert providers == (_globals.tracer_provider, _globals.meter_provider, _globals.logger_provider)
    behind = trace.get_tracer_provider().behind
    two = telemetry.configure("two", **MEMORY)
    assert (trace.get_tracer_provider(), metrics.get_meter_provider(), _logs.get_logger_provider()) == providers
    assert trace.get_tracer_provider().behind is two.tracer_provider is not behind
    # One proxy per scope and per instrument, as the SDK keeps them: asking again grows nothing.
    assert trace.get_tracer("same") is trace.get_tracer("same")
    meter = metrics.get_meter("same")
    assert meter is metrics.get_meter("same")
    assert meter.create_counter("test.same", "1", "d") is meter.create_counter("test.same", "1", "d")


def test_nothing_is_recorded_into_a_provider_once_another_stands_behind():
    """The swap itself, on two SDK pipelines that both stay open."""
    assert telemetry.current() is None
    pipes = []
    for _ in range(2):
        spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        pipes.append((tracer_provider, MeterProvider(metric_readers=[reader]), spans, reader))
    tracer = trace.get_tracer("swap")
    counter = metrics.get_meter("swap").create_counter("test.swap.requests")
    try:
        for tag, (tracer_provider, meter_provider, _, _) in zip(("a", "b"), pipes, strict=True):
            _globals.swap(tracer_provider, meter_provider, None)
            with tracer.start_as_current_span(f"span-{tag}"):
                counter.add(1, {"tag": tag})
    finally:
        _globals.swap(None, None, None)
    for tag, (tracer_provider, meter_provider, spans, reader) in zip(("a", "b"), pipes, strict=True):
        assert [s.name for s in spans.get_finished_spans()] == [f"span-{tag}"]
        points = [p for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics
                  for m in sm.metrics if m.name == "test.swap.requests" for p in m.data.data_points]
        assert [dict(p.attributes) for p in points] == [{"tag": tag}]
        tracer_provider.shutdown()
        meter_provider.shutdown()


def test_shipped_code_never_resets_opentelemetry_globals():
    """OpenTelemetry keeps resetting its set-once guards for its own tests; shipped code sets each
    global provider once, through the public API (the behaviour is shown above)."""
    shipped = [p for top in ("telemetry", "serving_hooks", "flows", "dashboards", "gpt_observatory")
               for p in (REPO / top).rglob("*.py")]
    assert REPO / "telemetry" / "_setup.py" in shipped
    writes = re.compile(r"_SET_ONCE|util\._once|\b(trace|metrics|_logs|_internal)\._[A-Za-z]\w*\s*=(?!=)")
    offenders = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in shipped
                 for n, line in enumerate(p.read_text().splitlines(), 1) if writes.search(line)]
    assert offenders == []
