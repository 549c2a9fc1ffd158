"""A line connection's state, flow control, timers and lingering close.

Every close is a "lingering close": the last line (``BYE ...`` or an ``ERR``),
then a half-close (FIN), then input is read and discarded until the client
closes or :data:`LINGER_SECONDS` pass. Closing a socket with unread input makes
the kernel send a reset, which can destroy the answers the client has not
read yet; reading until the client's FIN avoids that (Apache's
``lingering_close`` does the same).

Timers (idle, write, linger) are not per connection: the server's sweeper
compares the timestamps kept here, once per interval, for all of them
(:meth:`LingeringProtocol.expired`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from service.runtime.metrics import CounterChild
from service.runtime.tcp.handler import LineHandler

OPEN, CLOSING, CLOSED = 0, 1, 2
# How long a closing connection may take to read its last answer and close.
LINGER_SECONDS = 2.0


class Host(Protocol):
    """What a connection needs from its server (``service.runtime.tcp.server.TcpServer``)."""

    handler: LineHandler
    max_line_bytes: int
    stopping: bool
    linger: float
    messages_ok: CounterChild
    messages_error: CounterChild
    now: Callable[[], float]

    def wait_deadline(self) -> float | None: ...

    def spawn(self, coro: Coroutine[Any, Any, None], what: str = ...) -> asyncio.Task[None]: ...

    def connection_made(self, conn: Any) -> None: ...

    def connection_lost(self, conn: Any) -> None: ...


class LingeringProtocol(asyncio.Protocol):
    """The part of a connection that is about its state, not its lines."""

    __slots__ = (
        "_eof",
        "_reading",
        "_server",
        "_transport",
        "_waiting",
        "_write_paused",
        "last_active",
        "linger_until",
        "paused_since",
        "state",
    )

    def __init__(self, server: Host) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._eof = False
        self._reading = True
        self._waiting: asyncio.Task[None] | None = None
        self._write_paused = False
        self.state = OPEN
        self.last_active = self.paused_since = self.linger_until = 0.0

    def _clear(self) -> None:
        """Drop what is buffered (closing: nothing more will be answered)."""

    def _update_reading(self) -> None:
        """Read while there is nothing to wait for; otherwise let TCP push back."""
        want = self.state == CLOSING or (
            self.state == OPEN
            and self._waiting is None
            and not self._write_paused
            and not self._server.stopping
        )
        if want != self._reading and self._transport is not None:
            self._reading = want
            if want:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()

    def close(self, last_line: bytes | None) -> None:
        """Write ``last_line``, half-close, and drain input until the client closes."""
        if self.state != OPEN or self._transport is None:
            return
        self.state = CLOSING
        self._clear()
        transport = self._transport
        if last_line:
            transport.write(last_line)
        self.linger_until = self._server.now() + self._server.linger
        if self._eof or not transport.can_write_eof():
            transport.close()  # nothing unread can arrive: a plain close is clean
            return
        transport.write_eof()
        self._update_reading()

    def end_linger(self) -> None:
        """The client had its time to close: close now, cleanly if our answers are out."""
        if self._transport is None or self.state == CLOSED:
            return
        if self._transport.get_write_buffer_size():
            self._transport.abort()  # it does not read: a clean close would wait forever
        else:
            self._transport.close()

    def abort(self) -> None:
        """Cut the connection now (nothing more is written; connection_lost follows)."""
        if self._transport is not None and self.state != CLOSED:
            self.state = CLOSED
            self._transport.abort()

    def peer(self) -> str:
        """The client's address, for logs (not kept: it would cost memory per connection)."""
        peer = self._transport.get_extra_info("peername") if self._transport else None
        return f"{peer[0]}:{peer[1]}" if peer else "?"

    def expired(self, now: float, idle_timeout: float, write_timeout: float) -> str | None:
        """Which timer has run out, if any (the sweeper acts on the answer)."""
        if self.state == CLOSING:
            return "linger" if now > self.linger_until else None
        if self.state != OPEN:
            return None
        if self._write_paused:
            return "write" if now - self.paused_since > write_timeout else None
        if self._waiting is None and now - self.last_active > idle_timeout:
            return "idle"
        return None
