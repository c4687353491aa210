"""The SSE response the streaming backends return: it tells the stream whether the client left.

Starlette cancels a streaming body both when the client disconnects and when the server cancels
the request (a shutdown past its graceful timeout); the body alone cannot tell the two apart, and
only the second is an error of ours (a client that leaves is the 499 of a stream, as
``gateway.ClientGone`` is before the first byte). :class:`EventStream` marks the departure before
the cancellation reaches the body, and closes the body as soon as sending stops, so the body's own
cleanup (usage, ``RequestContext.error_type``, the GenAI span) runs before the gateway records the
request rather than whenever the generator is garbage-collected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Send


class Departure:
    """Set when the client went away mid-stream; read by the stream when it is cancelled."""

    __slots__ = ("gone",)

    def __init__(self) -> None:
        self.gone = False


class EventStream(StreamingResponse):
    """``text/event-stream`` from ``body(departure)``."""

    def __init__(self, body: Callable[[Departure], AsyncIterator[bytes]]) -> None:
        self.departure = Departure()
        self._body = body(self.departure)
        super().__init__(self._body, media_type="text/event-stream", headers={"cache-control": "no-cache"})

    async def listen_for_disconnect(self, receive: Receive) -> None:
        await super().listen_for_disconnect(receive)
        self.departure.gone = True  # before Starlette cancels the sending task

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        except OSError:  # ASGI 2.4 servers raise on a send after the client left
            self.departure.gone = True
            raise
        finally:
            # The body's cleanup only sets values and releases a connection: it does not suspend,
            # so it completes here even in a cancelled task.
            await self._body.aclose()
