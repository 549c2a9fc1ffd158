"""The public HTTP listener: the app on its own socket, one of the lifecycle's listeners.

:class:`HttpListener` builds the server from aiohttp's public parts
(``web.AppRunner`` for the app's start-up and cleanup, the connection
protocol of :mod:`.server`) and owns its listening socket. The API
middleware, when given, is taken out of the app's middleware list and bound
around the app's handler at the server instead: it behaves the same (it sees
404/405 and every handler error) but costs one coroutine layer per request
instead of aiohttp's two, with no ``functools.partial`` call.
"""

from __future__ import annotations

import asyncio
from typing import cast

from aiohttp import web

from service.runtime.http.deadlines import Sweeper
from service.runtime.http.middleware import ApiMiddleware, Handler
from service.runtime.http.server import HeaderTimeoutServer
from service.runtime.inherited import listen
from service.runtime.log import get_logger
from service.runtime.metrics import CounterChild, GaugeChild
from service.runtime.settings import HttpSettings

log = get_logger("service.http")

# Step 3: how long no request must have been in flight before the remaining
# keep-alive connections count as idle and are closed (see HttpListener.finish).
IDLE_LINGER = 0.25


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
        body_timeouts: CounterChild | None = None,
        connections_rejected: CounterChild | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self._header_timeouts = header_timeouts
        self._body_timeouts = body_timeouts or CounterChild()
        self._connections_rejected = connections_rejected or CounterChild()
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
        s = self.settings
        self.server = HeaderTimeoutServer(
            handler,
            request_factory=base.request_factory,
            # A client that hangs up cancels its handler, so the downstream calls
            # it started stop at once instead of at the deadline.
            handler_cancellation=True,
            sweeper=Sweeper(
                s.header_timeout,
                s.body_timeout,
                header_timeouts=self._header_timeouts,
                body_timeouts=self._body_timeouts,
            ),
            max_connections=s.max_connections,
            connections_rejected=self._connections_rejected,
            access_log=None,
            keepalive_timeout=self.settings.keepalive_timeout,
        )

    async def start(self) -> list[tuple[str, int]]:
        if self.server is None:
            await self.setup()
        assert self.server is not None
        s = self.settings
        loop = asyncio.get_running_loop()
        self._listening = await listen(self.name, self.server, s.host, s.port, s.backlog)
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
