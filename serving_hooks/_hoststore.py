"""The in-host rate-limit store: one ``limits`` memory storage, served over a unix socket by the worker
supervisor, that every worker's :class:`~serving_hooks.ratelimit.RateLimiter` uses as its storage.

Why: with ``--workers N`` and no Redis, one in-memory limiter per worker admits up to N times the
limit. The ``limits`` library has no storage that processes on one host can share without a server
(memory is per process; the rest are Redis, Memcached, MongoDB), and SQLite would block the event
loop on a lock under contention. So the supervisor (which serves no requests) keeps the counters in
``limits``' own async :class:`~limits.aio.storage.MemoryStorage` and answers each storage call in
order on its one event loop: every ``incr`` is atomic, so the limit is exact across workers.

The protocol is one JSON array per line each way: ``[method, args]`` in, ``[1, result]`` or
``[0, "error"]`` out, in the order asked. A worker keeps one connection and pipelines on it (a
FIFO of futures; an answer to a call that timed out is read and dropped); the calls a worker makes
in one turn of its event loop go out in one write, and are answered in one. Only the storage
methods the strategies use are served. Every failure (no socket, a dead supervisor, a timeout)
raises in the worker, where :class:`RateLimiter` fails open and counts it, as it does for Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from limits.aio.storage import MemoryStorage, MovingWindowSupport, SlidingWindowCounterSupport, Storage

__all__ = ["SCHEME", "HostStorage", "serve", "uri"]

SCHEME = "async+observatory-host"
# What the ``limits`` strategies call on a storage; nothing else is served.
_METHODS = frozenset({
    "incr", "get", "get_expiry", "clear", "check", "reset", "acquire_entry", "get_moving_window",
    "acquire_sliding_window_entry", "get_sliding_window", "clear_sliding_window",
})
_LIMIT = 1 << 16  # longest line either side sends (a key is short; this bounds a misbehaving peer)


def uri(path: Path) -> str:
    """The ``limits`` storage URI of the host store listening on ``path``."""
    return f"{SCHEME}://{Path(path).resolve()}"


async def serve(path: Path) -> asyncio.AbstractServer:
    """Listen on the unix socket ``path`` (made readable by this user only) until the server is closed."""
    storage = MemoryStorage()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rest = b""
        try:
            # Every call that arrived together is answered with one write: a busy worker's calls come in batches.
            while chunk := await reader.read(_LIMIT):
                *lines, rest = (rest + chunk).split(b"\n")
                if len(rest) > _LIMIT:
                    break  # not a line this protocol sends: drop the connection
                if lines:
                    writer.write(b"".join([await _call(storage, line) for line in lines]))
                    await writer.drain()
        except ConnectionError:
            pass  # the worker went away
        finally:
            writer.close()

    old = os.umask(0o077)
    try:
        return await asyncio.start_unix_server(answer, path=str(path), limit=_LIMIT)
    finally:
        os.umask(old)


async def _call(storage: MemoryStorage, line: bytes) -> bytes:
    try:
        method, args = orjson.loads(line)
        if method not in _METHODS:
            raise ValueError(f"not a storage method: {method!r}")
        result = [1, await getattr(storage, method)(*args)]
    except Exception as e:  # the answer says what failed; the worker raises it (and fails open)
        result = [0, f"{type(e).__name__}: {e}"]
    return orjson.dumps(result, option=orjson.OPT_APPEND_NEWLINE)


class HostStoreError(ConnectionError):
    """The host store answered with an error, or is not there."""


class HostStorage(Storage, MovingWindowSupport, SlidingWindowCounterSupport):
    """``limits`` async storage backed by the host store at ``async+observatory-host:///path/to/socket``."""

    STORAGE_SCHEME = [SCHEME]

    def __init__(self, uri: str, wrap_exceptions: bool = False, timeout_s: float = 0.05, **options: Any) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        self.path = urlsplit(uri).path
        self.timeout_s = timeout_s
        self._connection: asyncio.Task[_Connection] | None = None

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (OSError, TimeoutError)

    async def _ask(self, method: str, *args: Any) -> Any:
        return await asyncio.wait_for(self._send(method, args), self.timeout_s)

    async def _send(self, method: str, args: tuple[Any, ...]) -> Any:
        task = self._connection
        if task is None or (task.done() and (task.cancelled() or task.exception() or task.result().closed)):
            # One connection attempt at a time, shared by the calls that need it (none outlives its caller's timeout).
            task = self._connection = asyncio.get_running_loop().create_task(_Connection.open(self.path))
        connection = await asyncio.shield(task)
        return await connection.call(orjson.dumps([method, args], option=orjson.OPT_APPEND_NEWLINE))

    async def aclose(self) -> None:
        """Close the connection (the gateway's lifespan calls it through ``RateLimiter.close``)."""
        task, self._connection = self._connection, None
        if task is not None and task.done() and not task.cancelled() and task.exception() is None:
            await task.result().close()

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        return int(await self._ask("incr", key, expiry, amount))

    async def get(self, key: str) -> int:
        return int(await self._ask("get", key))

    async def get_expiry(self, key: str) -> float:
        return float(await self._ask("get_expiry", key))

    async def check(self) -> bool:
        try:
            return bool(await self._ask("check"))
        except Exception:
            return False

    async def reset(self) -> int | None:
        return await self._ask("reset")  # type: ignore[no-any-return]

    async def clear(self, key: str) -> None:
        await self._ask("clear", key)

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return bool(await self._ask("acquire_entry", key, limit, expiry, amount))

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        start, count = await self._ask("get_moving_window", key, limit, expiry)
        return float(start), int(count)

    async def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return bool(await self._ask("acquire_sliding_window_entry", key, limit, expiry, amount))

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        previous, previous_ttl, current, current_ttl = await self._ask("get_sliding_window", key, expiry)
        return int(previous), float(previous_ttl), int(current), float(current_ttl)

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        await self._ask("clear_sliding_window", key, expiry)


class _Connection:
    """One pipelined connection to the host store: answers come in the order the calls were written."""

    def __init__(self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.path, self._writer = path, writer
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._outgoing: list[bytes] = []
        self.closed = False
        self._reading = asyncio.get_running_loop().create_task(self._read(reader))

    @classmethod
    async def open(cls, path: str) -> _Connection:
        reader, writer = await asyncio.open_unix_connection(path, limit=_LIMIT)
        return cls(path, reader, writer)

    async def call(self, line: bytes) -> Any:
        if self.closed:
            raise HostStoreError(f"the connection to the rate-limit host store at {self.path} is closed")
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self._waiting.append(answer)
        if not self._outgoing:  # the calls made until the loop next runs go out in one write
            loop.call_soon(self._flush)
        self._outgoing.append(line)
        return await answer

    def _flush(self) -> None:
        data, self._outgoing = b"".join(self._outgoing), []
        if not self.closed:
            self._writer.write(data)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Hand each answer to the oldest call waiting; when the connection ends, fail the rest."""
        error: Exception = HostStoreError(f"the rate-limit host store at {self.path} closed the connection")
        try:
            while line := await reader.readline():
                ok, value = orjson.loads(line)
                answer = self._waiting.popleft()
                if answer.done():  # its caller timed out
                    continue
                if ok:
                    answer.set_result(value)
                else:
                    answer.set_exception(HostStoreError(f"rate-limit host store: {value}"))
        except Exception as e:
            error = e
        finally:
            self.closed = True
            self._writer.close()
            while self._waiting:
                answer = self._waiting.popleft()
                if not answer.done():
                    answer.set_exception(error)

    async def close(self) -> None:
        self.closed = True
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._reading
