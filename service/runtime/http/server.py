"""The public HTTP listener: aiohttp's server with a request-header deadline, started and stopped
as one of the lifecycle's listeners.

aiohttp has no timeout for reading request headers: a client that trickles
a header line keeps its connection (and a slot) forever, the slowloris
attack. :class:`HeaderTimeoutHandler` notes when a connection opens and when
the first bytes of a later request arrive, and the server's sweeper closes
the connection if the request has not reached its handler within
``http.header_timeout`` (nginx's ``client_header_timeout`` counts the same
way). A request body, and an idle keep-alive connection, are not affected
(``keepalive_timeout`` covers idle).

:class:`HttpListener` builds the server from aiohttp's public parts
(``web.AppRunner`` for the app's start-up and cleanup, ``web.Server`` and
``RequestHandler`` for the connections) and owns its listening socket. The
API middleware, when given, is taken out of the app's middleware list and
bound around the app's handler at the server instead: it behaves the same
(it sees 404/405 and every handler error) but costs one coroutine layer per
request instead of aiohttp's two, with no ``functools.partial`` call.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from service.runtime.http.middleware import ApiMiddleware, Handler
from service.runtime.http.problem import problem_response
from service.runtime.inherited import inherited_socket
from service.runtime.log import get_logger
from service.runtime.metrics import CounterChild, GaugeChild
from service.runtime.settings import HttpSettings

log = get_logger("service.http")

# Step 3: how long no request must have been in flight before the remaining
# keep-alive connections count as idle and are closed (see HttpListener.finish).
IDLE_LINGER = 0.25


class HeaderTimeoutHandler(RequestHandler):
    """aiohttp's connection protocol, plus when its current request head began to arrive."""

    __slots__ = ("_sweeps", "header_since", "in_request")

    def __init__(
        self, manager: HeaderTimeoutServer, *, loop: asyncio.AbstractEventLoop, **kwargs: Any
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._sweeps = manager
        # The sweep during which the bytes of a request head began to arrive (0:
        # none are pending): a counter, not a clock read, on the request path.
        # The server's sweeper closes the connection once that is too long ago.
        self.header_since = 0
        # True from when a request reaches the API middleware until it is answered
        # (the middleware says so): bytes read meanwhile are its body, or the
        # next request's, which may wait for this one.
        self.in_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # A connection that never sends a byte holds a slot just the same.
        self.header_since = self._sweeps.sweep_count

    def data_received(self, data: bytes) -> None:
        RequestHandler.data_received(self, data)  # not super(): this runs per packet
        if not self.header_since and not self.in_request and data:
            self.header_since = self._sweeps.sweep_count

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
    """``web.Server`` whose connections are :class:`HeaderTimeoutHandler`\\ s.

    One sweeper checks every connection's ``header_since`` four times per
    ``header_timeout`` (so a slow head is cut after 1 to 1.25 times it),
    instead of a timer per request: arming and cancelling a timer for each
    keep-alive request cost a few percent of a cheap one.
    """

    SWEEPS_PER_TIMEOUT = 4

    def __init__(
        self,
        handler: Handler,
        *,
        header_timeout: float,
        header_timeouts: CounterChild,
        **kwargs: Any,
    ) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(handler, loop=loop, **kwargs)  # type: ignore[arg-type]
        self._handler_kwargs = kwargs
        self._handler_kwargs.pop("request_factory", None)
        self._handler_kwargs.pop("handler_cancellation", None)
        self._protocol_loop = loop
        self.header_timeout = header_timeout
        self._header_timeouts = header_timeouts
        self.sweep_count = 1  # never 0: 0 means "no head pending"

    def __call__(self) -> RequestHandler:
        return HeaderTimeoutHandler(self, loop=self._protocol_loop, **self._handler_kwargs)

    async def sweep(self) -> None:
        """Close connections whose request head is not whole ``header_timeout`` after it began."""
        timeout, sweeps = self.header_timeout, self.SWEEPS_PER_TIMEOUT
        while True:
            await asyncio.sleep(timeout / sweeps)
            self.sweep_count += 1
            late = self.sweep_count - sweeps  # began at or before this sweep: too long ago
            for conn in self.connections:
                if not isinstance(conn, HeaderTimeoutHandler):
                    continue
                since = conn.header_since
                if since and since < late and not conn.in_request and conn.transport is not None:
                    conn.header_since = 0
                    self._header_timeouts.inc()
                    log.info(
                        "closing connection: request headers not complete in time", timeout=timeout
                    )
                    conn.force_close()


class HttpListener:
    """The public app on its own socket: a ``service.runtime.state.Listener`` named "http".

    :meth:`setup` runs the app's start-up (its cleanup contexts: every
    resource) and :meth:`cleanup` its cleanup; :meth:`start`, :meth:`stop_accepting`
    and :meth:`finish` are the listener's part of the start and the shutdown.
    """

    name = "http"

    def __init__(
        self,
        app: web.Application,
        settings: HttpSettings,
        *,
        header_timeouts: CounterChild,
        in_flight: GaugeChild,
        middleware: ApiMiddleware | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self._header_timeouts = header_timeouts
        self._in_flight = in_flight
        self._middleware = middleware
        self._runner: web.AppRunner | None = None
        self.server: HeaderTimeoutServer | None = None
        self._listening: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        """Run the app's start-up (resources start here) and build the server."""
        mw = self._middleware
        if mw is not None:
            self.app.middlewares.remove(mw.middleware)  # before start-up freezes the list
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        base = self._runner.server
        assert base is not None
        handler = cast(Handler, base.request_handler)
        if mw is not None:
            # The server's request factory is the app's: it makes web.Request objects.
            handler = mw.bind(handler, track_connection=True)
            mw.records.claim()  # this thread serves the app and settles its records
        self.server = HeaderTimeoutServer(
            handler,
            request_factory=base.request_factory,
            # A client that hangs up cancels its handler, so the downstream calls
            # it started stop at once instead of at the deadline.
            handler_cancellation=True,
            header_timeout=self.settings.header_timeout,
            header_timeouts=self._header_timeouts,
            access_log=None,
            keepalive_timeout=self.settings.keepalive_timeout,
        )

    async def start(self) -> list[tuple[str, int]]:
        if self.server is None:
            await self.setup()
        assert self.server is not None
        s = self.settings
        loop = asyncio.get_running_loop()
        sock = inherited_socket(self.name)  # a worker's, bound by its supervisor
        if sock is not None:
            self._listening = await loop.create_server(self.server, sock=sock, backlog=s.backlog)
        else:
            self._listening = await loop.create_server(
                self.server, s.host, s.port, backlog=s.backlog, reuse_address=True
            )
        # The "http" group: it runs until the listener's cleanup, like aiohttp's own tasks.
        self._sweeper = loop.create_task(self.server.sweep(), name="http:header-sweeper")
        return [sock.getsockname()[:2] for sock in self._listening.sockets]

    async def stop_accepting(self) -> None:
        """Step 2: close the listening socket (responses now say ``Connection: close``)."""
        if self._listening is not None:
            self._listening.close()

    async def finish(self, timeout: float) -> None:
        """Step 3: let in-flight requests finish within ``timeout``, then close every connection."""
        server = self.server
        if server is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        in_flight = self._in_flight
        # Every response now says "Connection: close", and aiohttp closes the
        # connection after sending it. Wait for connections to go that way
        # rather than closing them: closing a keep-alive connection races with
        # a client that is sending its next request on it (the request is then
        # lost mid-way). Only once no request has been in flight for
        # IDLE_LINGER are the remaining connections idle, and closed.
        # A request that has been parsed but not yet reached the middleware is
        # invisible to the gauge for a moment; the linger covers that too.
        # Polled (only during shutdown) so the request path keeps no event bookkeeping.
        quiet_since = loop.time()
        while server.connections and loop.time() < deadline:
            now = loop.time()
            if in_flight.value > 0:
                quiet_since = now
            elif now - quiet_since >= IDLE_LINGER:
                break
            await asyncio.sleep(0.01)
        server.pre_shutdown()  # idle keep-alive connections close now
        remaining = max(0.0, deadline - loop.time())
        try:
            async with asyncio.timeout(remaining):
                await server.shutdown(remaining)
        except TimeoutError:
            log.warning(
                "grace period over: closing busy HTTP connections",
                connections=len(server.connections),
            )
        for conn in server.connections:
            conn.force_close()

    async def cleanup(self) -> None:
        """Run the app's cleanup: its cleanup contexts close every resource, in reverse."""
        if self._listening is not None:
            self._listening.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.wait([self._sweeper])
        if self._runner is not None:
            await self._runner.cleanup()
