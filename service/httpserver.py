"""aiohttp's server with a request-header deadline.

aiohttp has no timeout for reading request headers: a client that trickles
a header line keeps its connection (and a slot) forever, the slowloris
attack. :class:`HeaderTimeoutHandler` starts a timer when a connection opens
and when the first bytes of a later request arrive, and closes the connection
if the header block is not complete within ``http.header_timeout``. A request body, and an idle
keep-alive connection, are not affected (``keepalive_timeout`` covers idle).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from service.log import get_logger
from service.metrics import CounterChild
from service.middleware import ApiMiddleware, problem_response

log = get_logger("service.http")

_ServerHandler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


class HeaderTimeoutHandler(RequestHandler):
    __slots__ = (
        "_body_open",
        "_header_deadline",
        "_header_timeout",
        "_header_timeouts",
        "_messages_seen",
    )

    def __init__(
        self, manager: web.Server, *, header_timeout: float, header_timeouts: CounterChild,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_timeouts = header_timeouts
        self._header_deadline: asyncio.TimerHandle | None = None
        self._messages_seen = 0
        self._body_open: Any = None  # the payload of the last request, while unread

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # A connection that never sends a byte holds a slot just the same (nginx's
        # client_header_timeout also counts from the connect).
        self._header_deadline = self._loop.call_later(self._header_timeout, self._headers_late)

    def data_received(self, data: bytes) -> None:
        RequestHandler.data_received(self, data)  # not super(): this runs per packet
        # _request_count is aiohttp's count of parsed request heads (web_protocol).
        if self._request_count != self._messages_seen:
            self._messages_seen = self._request_count
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None
            self._body_open = self._messages[-1][1] if self._messages else None
            return
        if self._header_deadline is not None or not data:
            return
        body = self._body_open
        if body is not None and not body.is_eof():
            return  # bytes of a request body, not of a header block
        self._header_deadline = self._loop.call_later(self._header_timeout, self._headers_late)

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self._request_count == self._messages_seen and self.transport is not None:
            self._header_timeouts.inc()
            log.info("closing connection: request headers not complete in time",
                     timeout=self._header_timeout)
            self.force_close()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
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
        log.info("request refused by the HTTP parser", status=status, remote=request.remote,
                 error=reason)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started: cannot answer the error")
        response = problem_response(status, f"The request is not valid HTTP/1.1: {reason}")
        response.force_close()
        return response

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        super().connection_lost(exc)


class HeaderTimeoutServer(web.Server):
    def __init__(self, *args: Any, header_timeout: float, header_timeouts: CounterChild,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self._header_timeouts = header_timeouts

    def __call__(self) -> RequestHandler:
        return HeaderTimeoutHandler(
            self, loop=self._loop, header_timeout=self._header_timeout,
            header_timeouts=self._header_timeouts, **self._kwargs,
        )


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose server is a :class:`HeaderTimeoutServer`.

    ``middleware``, when given, is taken out of the app's middleware list and
    bound around the app's handler at the server instead. It then behaves
    the same (it sees 404/405 and every handler error) but costs one
    coroutine layer per request instead of aiohttp's two (its middleware
    chain always adds ``_fix_request_current_app``), with no cache lookup and
    no ``functools.partial`` call: about 2 us of a ~50 us request, a few
    percent of the ISSUE 2 HTTP benchmark. Apps run without this runner
    (tests' ``TestServer``) keep the middleware in the app.
    """

    def __init__(self, app: web.Application, *, header_timeout: float,
                 header_timeouts: CounterChild, middleware: ApiMiddleware | None = None,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout
        self._header_timeouts = header_timeouts
        self._middleware = middleware

    async def _make_server(self) -> web.Server:
        mw = self._middleware
        if mw is not None:
            self.app.middlewares.remove(mw.middleware)  # before startup freezes the list
        # Let aiohttp build its server (start-up hooks, handler args), then
        # make ours from the same parts.
        base = await super()._make_server()
        handler = base.request_handler
        if mw is not None:
            # The server's request factory is the app's: it makes web.Request objects.
            handler = cast(_ServerHandler, mw.bind(handler))
        return HeaderTimeoutServer(
            handler, request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation, loop=asyncio.get_running_loop(),
            header_timeout=self._header_timeout, header_timeouts=self._header_timeouts,
            **base._kwargs,
        )
