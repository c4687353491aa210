"""Run a blocking iterator in a worker thread and consume it from the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")
_END: Any = object()


async def iterate_in_thread(executor: Executor, make_iterator: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Yield the items of ``make_iterator()`` as the worker thread produces them.

    Closing the async iterator (client gone) stops the producer at its next item.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
    stop = threading.Event()

    def put(item: Any, error: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (item, error))
        except RuntimeError:  # loop closed: nobody is listening any more
            stop.set()

    def produce() -> None:
        iterator = None
        try:
            iterator = make_iterator()
            for item in iterator:
                if stop.is_set():
                    break
                put(item)
        except BaseException as e:
            put(_END, e)
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None and stop.is_set():
                close()
        put(_END)

    future = loop.run_in_executor(executor, produce)
    try:
        while True:
            item, error = await queue.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        if future.done():
            future.result()
