"""The TCP listener: accepting, limits, timers, metrics, and its part of the shutdown.

:class:`TcpServer` is a ``service.runtime.state.Listener``: the lifecycle starts it
after the admin listener, calls :meth:`stop_accepting` in shutdown step 2 and
:meth:`finish` in step 3. It closes its clients itself: ``Server.wait_closed()``
waits for every connection from Python 3.12.1 on and returned at once before,
so neither behaviour is something to build a bounded shutdown on.

One sweeper task checks the idle, write and linger timers of all connections
once per interval, instead of a timer handle per connection: a timer is
cheap, ten thousand of them re-armed on every line are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from service.runtime.inherited import listen
from service.runtime.log import get_logger
from service.runtime.metrics import Metrics
from service.runtime.settings import TcpSettings
from service.runtime.tcp.answers import BYE_IDLE, BYE_SHUTDOWN, ERR_BUSY
from service.runtime.tcp.closing import LINGER_SECONDS
from service.runtime.tcp.connection import Connection
from service.runtime.tcp.handler import LineHandler

if TYPE_CHECKING:
    from service.runtime.tracing.core import Tracing

log = get_logger("service.tcp")

# Shutdown answers the last lines this long before the grace period ends, so
# that they are written before the remaining connections are cut.
SHUTDOWN_MARGIN = 0.25
# At shutdown a client that got "BYE shutdown" has this long to close first.
SHUTDOWN_LINGER = 0.2


class TcpServer:
    """The line-protocol server: it owns the wire, ``handler`` answers each line.

    ``watch(task, what)`` (the service's ``ServiceState.watch``) is given its
    core task, the sweeper: if that dies, the service exits 1.
    """

    name = "tcp"

    def __init__(
        self,
        settings: TcpSettings,
        metrics: Metrics,
        handler: LineHandler,
        watch: Callable[[asyncio.Task[None], str], None] | None = None,
        *,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self._watch = watch
        self.tracing = tracing  # on: each read of event lines is a span (.traced)
        self.handler = handler
        self.max_line_bytes = settings.max_line_bytes
        self.stopping = False
        self.active = 0  # accepted connections not yet closed
        self.connections: set[Connection] = set()  # every open transport, rejected ones too
        self.messages_ok = metrics.tcp_messages.labels("ok")
        self.messages_error = metrics.tcp_messages.labels("error")
        self._accepted = metrics.tcp_connections.labels("accepted")
        self._rejected = metrics.tcp_connections.labels("rejected")
        metrics.tcp_active.set_function(lambda: self.active)
        self._server: asyncio.Server | None = None
        # The loop's clock, bound once: it is read on every read from every client.
        self.now: Callable[[], float] = time.monotonic
        self._tasks: set[asyncio.Task[None]] = set()
        self._prefix = metrics.register_task_group("tcp")
        self._deadline: float | None = None
        self.linger = LINGER_SECONDS  # see service.runtime.tcp.connection: lingering close
        # Timers fire within about a tenth of their value (at most a second late).
        self._sweep_interval = min(1.0, settings.idle_timeout / 10, settings.write_timeout / 10)

    # -- Listener -------------------------------------------------------------
    async def start(self) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        self.now = loop.time
        s = self.settings
        tracing = self.tracing
        if tracing is None:
            protocol: Callable[[], Connection] = lambda: Connection(self)  # noqa: E731
        else:
            from service.runtime.tcp.traced import TracedConnection  # imports OpenTelemetry

            protocol = lambda: TracedConnection(self, tracing)  # noqa: E731
        self._server = await listen(self.name, protocol, s.host, s.port, s.backlog)
        sweeper = self.spawn(self._sweep(), "sweeper")
        if self._watch is not None:
            self._watch(sweeper, "tcp server's sweeper")
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    async def stop_accepting(self) -> None:
        """Step 2: close the listening socket; every client stops being read."""
        self.stopping = True
        if self._server is not None:
            self._server.close()  # the listening sockets only, on every Python version
        for conn in list(self.connections):
            conn.begin_shutdown()

    async def finish(self, timeout: float) -> None:
        """Step 3: answer what was read, ``BYE shutdown``, close; cut the rest at ``timeout``."""
        if not self.stopping:
            await self.stop_accepting()
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + timeout
        # Lines waiting for room get "ERR overloaded" before the grace period ends.
        soon = self.wait_deadline()
        for conn in self.connections:
            scope = conn.wait_scope()
            if scope is not None and soon is not None:
                when = scope.when()
                scope.reschedule(soon if when is None else min(when, soon))
        # Clients that got their BYE need not be waited for long: once our
        # answers are flushed and input has been drained for a moment, close.
        self.linger = SHUTDOWN_LINGER
        now = loop.time()
        for conn in self.connections:
            conn.linger_until = min(conn.linger_until, now + SHUTDOWN_LINGER)
        while self.connections and loop.time() < self._deadline:
            # Polled: only during shutdown, so the hot path keeps no extra bookkeeping.
            await asyncio.sleep(0.05)
            self._expire(loop.time())
        # Whatever is still open now is cut; count the lines it read but did not answer.
        cut = list(self.connections)
        (log.warning if cut else log.info)(
            "tcp clients closed",
            seconds=round(timeout - (self._deadline - loop.time()), 3),
            cut=len(cut),
            unanswered=sum(c.unanswered() for c in cut),
        )
        await self.close()

    # -- resources ------------------------------------------------------------
    async def close(self) -> None:
        """Abort what is still open and end every task; safe to call twice."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await asyncio.sleep(0)  # let the aborted transports call connection_lost
        if self._server is not None and not self.connections:
            # Nothing is left for wait_closed() to wait for, on any Python version;
            # bounded all the same, as its meaning changed in 3.12.1.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
        self._server = None

    # -- used by connections -----------------------------------------------------
    def wait_deadline(self) -> float | None:
        """When a wait for room must give up: never before shutdown, then before the end."""
        return None if self._deadline is None else self._deadline - SHUTDOWN_MARGIN

    def spawn(
        self,
        coro: Coroutine[Any, Any, None],
        what: str = "answer-later",
    ) -> asyncio.Task[None]:
        """An owned task, named into the ``tcp`` group for the task metrics."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self._prefix}{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def connection_made(self, conn: Connection) -> None:
        self.connections.add(conn)
        if self.stopping:
            conn.close(BYE_SHUTDOWN)
        elif self.active >= self.settings.max_connections:
            self._rejected.value += 1
            conn.close(ERR_BUSY)
        else:
            self._accepted.value += 1
            self.active += 1
            conn.accepted = True

    def connection_lost(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if conn.accepted:
            self.active -= 1

    async def _sweep(self) -> None:
        # A sweep that raises is a bug in the server's own bookkeeping, and going
        # on would leave every timer unenforced: the sweeper dies, and the service
        # (watching it, see ``watch``) logs why and exits 1 to be restarted.
        while True:
            await asyncio.sleep(self._sweep_interval)
            self._expire(self.now())

    def _expire(self, now: float) -> None:
        """Close idle clients, abort clients that stopped reading, end lingering closes."""
        idle, write = self.settings.idle_timeout, self.settings.write_timeout
        expired = [
            (c, why) for c in self.connections if (why := c.expired(now, idle, write)) is not None
        ]
        for conn, why in expired:
            if why == "idle":
                log.debug("tcp: closing idle connection", peer=conn.peer())
                conn.close(BYE_IDLE)
            elif why == "linger":
                conn.end_linger()
            else:
                log.info("tcp: aborting a connection that does not read", peer=conn.peer())
                conn.abort()
