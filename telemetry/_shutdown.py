"""Shutting the tracer, logger and meter providers down together, within one deadline.

The SDK's providers shut down one at a time, each waiting up to 30 s for an exporter: with a
collector that accepts connections and never answers, a process took 46.6 s to exit. Here each
runs in a daemon thread of its own and the caller waits for the deadline at most; what still hangs
then is left behind (and named by the caller).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

__all__ = ["close_providers"]


def close_providers(
    tracers: TracerProvider | None, loggers: LoggerProvider | None, meters: MeterProvider | None, timeout_s: float
) -> list[str]:
    """Shut the providers down in threads of their own, joined against one deadline (the SDK's own
    shutdowns wait up to 30 s each, one after the other); return the signals still busy at it.

    The meter provider's final collection waits for the other two (so it counts their last exports)
    but keeps a share of the deadline for itself: a hanging trace exporter does not cost the metrics.
    """
    deadline = time.monotonic() + timeout_s
    threads: dict[str, threading.Thread] = {}

    def start(signal: str, close: Any) -> None:
        thread = threading.Thread(target=_best_effort, args=(close,), name=f"observatory-shutdown-{signal}", daemon=True)
        thread.start()
        threads[signal] = thread

    if tracers is not None:
        start("traces", tracers.shutdown)
    if loggers is not None:
        start("logs", loggers.shutdown)
    if meters is not None:
        first, reserve = list(threads.values()), min(1.0, timeout_s / 4)

        def meters_last() -> None:
            for thread in first:
                thread.join(max(0.0, deadline - reserve - time.monotonic()))
            meters.shutdown(timeout_millis=max(0.0, deadline - time.monotonic()) * 1000)

        start("metrics", meters_last)
    for thread in threads.values():
        thread.join(max(0.0, deadline - time.monotonic()))
    return [signal for signal, thread in threads.items() if thread.is_alive()]


def _best_effort(close: Any) -> None:
    try:
        close()
    except Exception as e:  # shutting down: a failing exporter must not stop the others
        sys.stderr.write(f"telemetry: shutdown failed: {type(e).__name__}: {e}\n")
