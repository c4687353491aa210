"""One Prometheus scrape for every worker of ``serve --workers N``.

Each worker's series live in its own process (the OpenTelemetry Prometheus reader is a custom
collector over the SDK's in-memory state, so prometheus-client's multiprocess mode, which reads
files its own metric classes write, cannot see them). So each worker also answers on a unix socket
of its own, in the supervisor's private folder, with its own exposition; the worker a scrape of
``/metrics`` reaches asks every other worker for theirs, adds a ``worker`` label (the worker's index,
0..N-1: bounded, and the same for a worker restarted in its place) to every sample of each, and
answers with one exposition. A worker that does not answer within the timeout (it is restarting)
is left out of that scrape; Prometheus' ``rate()`` takes the counter reset of a restarted worker in
its stride. With one worker nothing of this runs: ``/metrics`` is the process's registry as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from gpt_observatory.telemetry import names

__all__ = ["exposition", "join", "merge", "serve_own"]

_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class _Peers:
    index: int
    sockets: Mapping[int, Path]  # every worker's socket, by index, this one's included


_peers: _Peers | None = None


def join(index: int, sockets: Mapping[int, Path]) -> None:
    """Make this process worker ``index`` of the workers answering on ``sockets``: from now on
    :func:`exposition` is every worker's. Called once, when the worker starts."""
    global _peers
    _peers = _Peers(index, dict(sockets))


async def exposition() -> bytes:
    """This process's exposition, or, in a worker, every worker's merged with a ``worker`` label each."""
    own = await asyncio.to_thread(generate_latest, REGISTRY)
    peers = _peers
    if peers is None:
        return own
    others = [i for i in sorted(peers.sockets) if i != peers.index]
    answers = await asyncio.gather(*(_fetch(peers.sockets[i]) for i in others), return_exceptions=True)
    texts = {str(peers.index): own}
    texts.update({str(i): a for i, a in zip(others, answers, strict=True) if isinstance(a, bytes)})
    return await asyncio.to_thread(merge, texts)


async def serve_own(path: Path) -> asyncio.AbstractServer:
    """Answer each connection to the unix socket ``path`` with this process's own exposition."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await asyncio.to_thread(generate_latest, REGISTRY))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_unix_server(answer, path=str(path))


async def _fetch(path: Path) -> bytes:
    async def read() -> bytes:
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            return await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.wait_for(read(), _TIMEOUT_S)


def merge(texts: Mapping[str, bytes]) -> bytes:
    """One exposition of the families in ``texts`` (exposition by worker), each sample labelled with
    its worker; a family's help, type and unit are the first worker's."""
    families: dict[str, Metric] = {}
    for worker, text in texts.items():
        for family in text_string_to_metric_families(text.decode()):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                merged.samples.append(sample._replace(labels={**sample.labels, names.WORKER: worker}))
    return generate_latest(_Families(list(families.values())))  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Families:
    """What :func:`generate_latest` needs of a registry: the families to write."""

    families: list[Metric]

    def collect(self) -> list[Metric]:
        return self.families
