"""SIGTERM to a gateway under load: requests in flight finish, telemetry is flushed before the
process exits, and nothing the gateway accepted is lost."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gpt_observatory.telemetry import names
from tests.components import wait_for
from tests.reliability.support import Load, call, last_counter, server_spans_by_trace, start_gateway

pytestmark = pytest.mark.filterwarnings("ignore:Add type hints")  # the slow pyfunc is untyped on purpose

IN_FLIGHT = 8
LONG = 100  # tokens: about 1 s per request at 10 ms a token, so all are in flight together


@pytest.mark.timeout(120)
def test_sigterm_under_load_finishes_in_flight_requests_and_flushes_telemetry(slow_registry, tmp_path):
    reg = slow_registry
    gw = start_gateway(tmp_path, reg.uri, reg.model, reg.keys_file)
    try:
        gw.wait_ready("1")
        assert call(gw.url, reg.key, reg.model, 2, stream=False).ok  # warm
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            in_flight = [pool.submit(call, gw.url, reg.key, reg.model, LONG, i % 2 == 0) for i in range(IN_FLIGHT)]
            wait_for(lambda: gw.scrape().total(names.HTTP_SERVER_ACTIVE_REQUESTS) >= IN_FLIGHT, timeout=10,
                     interval=0.02, what="every request in flight")
            with Load(gw.url, reg.key, reg.model, max_tokens=10, workers=2) as load:
                time.sleep(0.2)
                gw.sigterm()
                returncode = gw.proc.wait(60)
            finished = [f.result() for f in in_flight]
    finally:
        gw.stop()

    assert returncode == 0, gw.tail()
    assert "Traceback" not in gw.tail()
    # Every request in flight at the signal finished with its whole answer.
    assert [r.status for r in finished] == [200] * IN_FLIGHT, [r.error or r.text[:80] for r in finished]
    assert all(len(r.text) == LONG and r.text[0] == "a" for r in finished)
    # Load arriving during the shutdown was either served completely or never accepted (no answer at all).
    accepted = [r for r in load.results if r.status is not None]
    assert all(r.ok and len(r.text) == 10 for r in accepted), [(r.status, r.error) for r in accepted if not r.ok]
    assert accepted, "no load request was served before the shutdown"
    # Telemetry was flushed on the way out: a server span for every request served, and the final counter.
    served = [*finished, *accepted]
    spans = server_spans_by_trace(gw.traces)
    missing = [r.trace_id for r in served if r.trace_id not in spans]
    assert not missing, f"{len(missing)} of {len(served)} served requests have no span in {gw.traces}"
    assert all(spans[r.trace_id]["attributes"][names.HTTP_RESPONSE_STATUS_CODE] == 200 for r in served)
    assert last_counter(gw.metrics_file, names.GATEWAY_REQUESTS.name) == len(served) + 1  # + the warm-up
