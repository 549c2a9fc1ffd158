"""aiohttp's server with read deadlines and a connection cap.

aiohttp has no deadline for reading a request: a client that trickles its
head or its body keeps its connection (and a handler) forever, the slowloris
attacks. :class:`HeaderTimeoutHandler` notes what its connection is waiting
for, and the server's sweeper (:mod:`.deadlines`) closes a connection whose
request head is not whole within ``http.header_timeout``, and fails a
request whose body is not whole within ``http.body_timeout`` (408). An idle
keep-alive connection is left to ``keepalive_timeout``. Past
``http.max_connections`` open connections, a new one is answered 503 at
once and closed (:mod:`.refusal`). The listener that serves it is in
:mod:`.listener`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from service.runtime.http import compat
from service.runtime.http.deadlines import Sweeper
from service.runtime.http.middleware import Handler
from service.runtime.http.problem import problem_response
from service.runtime.http.refusal import WARN_EVERY, Refusal, refusal_response
from service.runtime.log import get_logger
from service.runtime.metrics import CounterChild, end_normally

log = get_logger("service.http")


class HeaderTimeoutHandler(RequestHandler):
    """aiohttp's connection protocol, plus what its read deadlines need (:mod:`.deadlines`)."""

    __slots__ = (
        "_end_seen",
        "_server",
        "_sweeper",
        "body_of",
        "body_since",
        "header_since",
        "request",
    )

    def __init__(
        self, manager: HeaderTimeoutServer, *, loop: asyncio.AbstractEventLoop, **kwargs: Any
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._server = manager
        self._sweeper = manager.sweeper
        # The sweep during which the bytes of a request head began to arrive (0:
        # none are pending): a counter, not a clock read, on the request path.
        self.header_since = 0
        # The request from when it reaches the API middleware until it is
        # answered (the middleware sets it): bytes read meanwhile are its body,
        # or the next request's, which may wait for this one.
        self.request: BaseRequest | None = None
        # The sweeper's own notes: the request whose body it saw pending, since when.
        self.body_of: BaseRequest | None = None
        self.body_since = 0
        self._end_seen = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # A connection that never sends a byte holds a slot just the same.
        self.header_since = self._sweeper.count

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._server.open_connections -= 1
        self.request = self.body_of = None

    def data_received(self, data: bytes) -> None:
        RequestHandler.data_received(self, data)  # not super(): this runs per packet
        if not self.header_since and self.request is None and data:
            self.header_since = self._sweeper.count

    # aiohttp ends the connection's task by cancelling it, also when the client
    # closes the connection between requests or keep-alive expires: the normal
    # end of a connection, which the task metrics then count as finished. The
    # first close decides; only one while a request is in flight (or at
    # shutdown) counts as cancelled: work was cut.
    def _ending(self) -> None:
        if not self._end_seen:
            self._end_seen = True
            task = None if self.request is not None else compat.connection_task(self)
            if task is not None:
                end_normally(task)

    def force_close(self) -> None:
        self._ending()
        super().force_close()

    def close(self) -> None:
        self._ending()
        super().close()

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        self._end_seen = True
        await super().shutdown(timeout)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request the HTTP parser refused: problem+json and one info line.

        aiohttp answers these (bad header bytes, a bad request line, an
        oversized header) in text/plain and logs each at error level with a
        traceback: log spam that any client can cause. A server error keeps
        aiohttp's handling.
        """
        if status >= 500 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        reason = exc.message.split("\n", 1)[0][:200]  # the rest echoes the client's bytes
        log.info(
            "request refused by the HTTP parser", status=status, remote=request.remote, error=reason
        )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started: cannot answer the error")
        response = problem_response(status, f"The request is not valid HTTP/1.1: {reason}")
        response.force_close()
        return response


class HeaderTimeoutServer(web.Server):
    """``web.Server`` making :class:`HeaderTimeoutHandler`\\ s, at most ``max_connections`` open.

    Connections are counted from their protocol's creation to its
    ``connection_lost``, so a burst accepted in one loop pass is counted
    before any of it has started; the count (rather than ``len(connections)``,
    a copy) is one integer per accept.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        sweeper: Sweeper,
        max_connections: int,
        connections_rejected: CounterChild,
        **kwargs: Any,
    ) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(handler, loop=loop, **kwargs)  # type: ignore[arg-type]
        self._handler_kwargs = kwargs
        self._handler_kwargs.pop("request_factory", None)
        self._handler_kwargs.pop("handler_cancellation", None)
        self._protocol_loop = loop
        self.sweeper = sweeper
        self.max_connections = max_connections
        self.open_connections = 0
        self._rejected = connections_rejected
        self._refusal = refusal_response(max_connections)
        self._warned_at = -WARN_EVERY

    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]
        if self.open_connections >= self.max_connections:
            self._rejected.inc()
            now = time.monotonic()
            if now - self._warned_at >= WARN_EVERY:
                self._warned_at = now
                log.warning(
                    "refusing connections: http.max_connections are open",
                    max_connections=self.max_connections,
                    refused=self._rejected.value,
                )
            return Refusal(self._refusal, self._protocol_loop)
        self.open_connections += 1
        return HeaderTimeoutHandler(self, loop=self._protocol_loop, **self._handler_kwargs)

    async def sweep(self) -> None:
        """The read deadlines of every connection, checked by one task (:mod:`.deadlines`)."""
        await self.sweeper.run(self._swept)

    def _swept(self) -> list[HeaderTimeoutHandler]:
        return [c for c in self.connections if isinstance(c, HeaderTimeoutHandler)]
