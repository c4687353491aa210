"""Helpers for the gateway/app/proxy tests: serve an ASGI app with real uvicorn on loopback,
read what telemetry exported, and scan it for secrets."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from tests.components import free_port


@dataclass
class Served:
    """An app served by uvicorn in a thread of the test process."""

    url: str
    server: uvicorn.Server

    @property
    def v1(self) -> str:
        return self.url + "/v1"


@contextlib.contextmanager
def serve(app: Any, timeout: float = 30.0, lifespan: str = "on") -> Iterator[Served]:
    """Run ``app`` with real uvicorn on a free loopback port until the block ends."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan=lifespan)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", server)
    finally:
        server.should_exit = True
        thread.join(30)


def settle(handle: Any, timeout: float = 5.0) -> None:
    """Wait until the gateway has finished every request (its span and metrics are recorded just
    after the last byte is sent, so a fast client can look before they are)."""
    from gpt_observatory.telemetry import names

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        points = handle.memory.metrics().get(names.HTTP_SERVER_ACTIVE_REQUESTS.name)
        if points and sum(p.value for p in points) == 0:
            return
        time.sleep(0.01)
    raise AssertionError("the gateway still has requests in flight")


def spans_of(spans: Iterable[Any], trace_id: int) -> list[Any]:
    return [s for s in spans if s.context.trace_id == trace_id]


def by_name(spans: Iterable[Any], name: str) -> Any:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"expected one span {name!r}, got {[s.name for s in spans]}"
    return found[0]


def point_value(points: list[Any], **attrs: Any) -> float:
    """Sum of counter values (or histogram counts) over points whose attributes include ``attrs``."""
    total = 0.0
    for p in points:
        if all(p.attributes.get(k) == v for k, v in attrs.items()):
            total += getattr(p, "value", None) if hasattr(p, "value") else p.count
    return total


def exported_text(handle: Any, *folders: Path) -> str:
    """Everything a memory telemetry handle holds, plus the JSON-lines files under ``folders``, as text."""
    parts: list[str] = []
    for span in handle.memory.spans():
        parts.append(span.to_json())
    for log in handle.memory.logs():
        record = getattr(log, "log_record", log)
        parts.append(f"{record.body!r} {dict(record.attributes or {})!r}")
    for name, points in handle.memory.metrics().items():
        parts.append(name)
        parts.extend(repr(dict(p.attributes)) for p in points)
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.jsonl")):
            parts.append(path.read_text())
    return "\n".join(parts)


def assert_no_secrets(text: str, secrets: Iterable[str]) -> None:
    leaked = [s[:12] + "..." for s in secrets if s and s in text]
    assert not leaked, f"exported telemetry contains secrets: {leaked}"
    assert "Bearer " not in text and "bearer " not in text, "an Authorization value was exported"
