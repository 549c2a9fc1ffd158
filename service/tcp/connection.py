"""One TCP client: line framing, ordered answers, flow control, and a clean close.

A connection is a plain :class:`asyncio.Protocol`, not a stream reader and a
task: an idle client then costs one small object instead of a suspended task
and two stream buffers (about 1.3 KB against 5 KB per connection on uvloop,
../shared/PERF-NOTES.md), and answering a ``PING`` is a callback, not a task
switch. A task exists only while a connection waits for room in the pipeline.

Answers stay in order because a connection handles one line at a time and
never starts the next before the current one is answered: while it waits for
the intake or for the client to read its answers, it stops reading
(``pause_reading``), the unhandled bytes stay in its buffer, and TCP flow
control pushes back on the client. Memory per client is therefore bounded by
one read chunk, one line (``tcp.max_line_bytes``) and the transport's write
buffer high-water mark.

Every close is a "lingering close": the last line (``BYE ...`` or an ``ERR``),
then a half-close (FIN), then input is read and discarded until the client
closes or :data:`LINGER_SECONDS` pass. Closing a socket with unread input makes
the kernel send a reset, which can destroy the answers the client has not
read yet; reading until the client's FIN avoids that (Apache's
``lingering_close`` does the same).

Timers (idle, write, linger) are not per connection: the server's sweeper
compares the timestamps kept here, once per interval, for all of them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from service.errors import IntakeClosed, IntakeFull
from service.events import Event, EventError, parse_line
from service.log import get_logger
from service.tcp.answers import (
    BYE_SHUTDOWN,
    ERR_BARE_CR,
    ERR_INTERNAL,
    ERR_OVERLOADED,
    ERR_TOO_LONG,
    PONG,
    json_error,
)

if TYPE_CHECKING:
    from service.tcp.server import TcpServer

log = get_logger("service.tcp")

OPEN, CLOSING, CLOSED = 0, 1, 2
# How long a closing connection may take to read its last answer and close.
LINGER_SECONDS = 2.0
# Answers are written in one call per read chunk, or at least this often, so
# a chunk of tiny bad lines cannot build an unbounded list of long answers.
FLUSH_BYTES = 64 * 1024

class Connection(asyncio.Protocol):
    """The protocol of one client connection; created by :class:`TcpServer`."""

    __slots__ = (
        "_buffer",
        "_eof",
        "_reading",
        "_scanned",
        "_server",
        "_transport",
        "_wait_scope",
        "_waiting",
        "_write_paused",
        "accepted",
        "last_active",
        "linger_until",
        "paused_since",
        "state",
    )

    def __init__(self, server: TcpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer: bytes | bytearray = b""
        self._scanned = 0  # bytes at the buffer's start known to hold no newline
        self._eof = False
        self._reading = True
        self._waiting: asyncio.Task[None] | None = None
        self._wait_scope: asyncio.Timeout | None = None
        self._write_paused = False
        self.accepted = False
        self.state = OPEN
        self.last_active = self.paused_since = self.linger_until = 0.0

    # -- asyncio.Protocol callbacks -----------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast.
        self._transport = cast(asyncio.Transport, transport)
        self.last_active = self._server.now()
        self._server.connection_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self._buffer = b""
        if self._waiting is not None:
            self._waiting.cancel()  # the event is not taken; nobody is left to answer
        self._server.connection_lost(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = self._server.now()
        transport = self._transport
        if (data == b"PING\n" and not self._buffer and self._waiting is None
                and not self._write_paused and self.state == OPEN and transport is not None):
            # A lone PING, the commonest read of all (health checks, the benchmark):
            # answered without the framing loop.
            transport.write(PONG)
            self._server.messages_ok.value += 1
            return
        if self.state != OPEN:
            return  # closing: input is read and dropped only so that the close is clean
        buf = self._buffer
        if buf:
            if not isinstance(buf, bytearray):
                buf = self._buffer = bytearray(buf)
            buf += data
        else:
            self._buffer = data
        self._process()

    def eof_received(self) -> bool:
        if self.state != OPEN:
            return False  # the client closed after our close: the transport closes now
        # The client has sent its last line: answer everything, then close.
        self._eof = True
        self._process()
        return True

    def pause_writing(self) -> None:
        # The client does not read its answers: read no more lines from it.
        self._write_paused = True
        self.paused_since = self._server.now()
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.last_active = self._server.now()
        self._process()

    # -- lines --------------------------------------------------------------
    def _process(self) -> None:
        """Answer the complete lines in the buffer, in order, until one has to wait."""
        if self.state != OPEN or self._waiting is not None or self._write_paused:
            return
        server = self._server
        transport = self._transport
        assert transport is not None
        limit = server.max_line_bytes
        buf = self._buffer
        out: list[bytes] = []
        size = start = pongs = 0
        too_long = False
        final: bytes | None = None
        end = buf.find(b"\n", self._scanned)
        while end >= 0:
            if end - start > limit:
                too_long = True  # answered below, after the answers before it
                break
            line = buf[start:end]
            start = end + 1
            if line == b"PING" or line == b"PING\r":
                out.append(PONG)
                pongs += 1
                size += 5
            else:
                answer = self._answer(line)
                if answer is None:  # waiting for room
                    break
                if answer is BYE_SHUTDOWN:  # the intake is closed: this line is the last
                    final = answer
                    break
                out.append(answer)
                size += len(answer)
            if size >= FLUSH_BYTES:
                transport.write(b"".join(out))
                out.clear()
                size = 0
                if self._write_paused:
                    break
            end = buf.find(b"\n", start)
        if pongs:
            server.messages_ok.value += pongs
        if out:
            transport.write(b"".join(out))
        rest = buf[start:]
        self._buffer = rest
        self._scanned = len(rest) if end < 0 else 0
        if final is not None:
            self.close(final)
            return
        if self.state != OPEN or self._waiting is not None:
            return
        if too_long or (end < 0 and len(rest) > limit):
            server.messages_error.value += 1
            self.close(ERR_TOO_LONG)
        elif self._eof and not self._write_paused:
            if rest:  # a last line without "\n" is still a line
                self._buffer = rest + b"\n"
                self._scanned = 0
                self._process()
            else:
                self.close(None)
        elif server.stopping and not self._write_paused:
            self.close(BYE_SHUTDOWN)
        elif not self._reading:
            self._update_reading()

    def _answer(self, line: bytes | bytearray) -> bytes | None:
        """The answer to one line that is not ``PING``.

        None when the answer comes later (the line waits for room), and
        ``BYE_SHUTDOWN`` when the pipeline is closed and the connection must end.
        """
        server = self._server
        if line.endswith(b"\r"):
            line = line[:-1]
        if b"\r" in line:
            server.messages_error.value += 1
            return ERR_BARE_CR
        if b"PING" in line and line.strip() == b"PING":  # no copy for an event line
            server.messages_ok.value += 1
            return PONG
        try:
            event = parse_line(bytes(line))  # bytes(b) is b itself: no copy
        except EventError as exc:
            server.messages_error.value += 1
            return json_error(line, exc)
        try:
            event_id = server.intake.offer_nowait(event)
        except IntakeFull:
            self._wait_for_room(event)
            return None
        except IntakeClosed:
            return BYE_SHUTDOWN
        except Exception:
            # A bug behind the intake must not cost the connection its later answers.
            log.exception("tcp: intake failed")
            server.messages_error.value += 1
            return ERR_INTERNAL
        server.messages_ok.value += 1
        return f"OK {event_id}\n".encode()

    def _wait_for_room(self, event: Event) -> None:
        """Stop reading and wait (in a task, the only one a connection ever has) for room."""
        self._waiting = self._server.spawn(self._offer_later(event))
        self._update_reading()

    async def _offer_later(self, event: Event) -> None:
        server = self._server
        answer: bytes | None
        try:
            # The scope's deadline is None until shutdown, which moves it before
            # the end of the grace period (TcpServer.finish).
            async with asyncio.timeout_at(server.wait_deadline()) as scope:
                self._wait_scope = scope
                event_id = await server.intake.offer(event, server.settings.overload_timeout)
            answer = f"OK {event_id}\n".encode()
        except (IntakeFull, TimeoutError):
            answer = ERR_OVERLOADED
        except IntakeClosed:
            answer = None
        except Exception:
            log.exception("tcp: intake failed")
            answer = ERR_INTERNAL
        finally:
            self._wait_scope = None
            self._waiting = None
        if self.state != OPEN:
            return
        if answer is None:
            self.close(BYE_SHUTDOWN)
            return
        if answer.startswith(b"OK"):
            server.messages_ok.value += 1
        else:
            server.messages_error.value += 1
        assert self._transport is not None
        self._transport.write(answer)
        self.last_active = server.now()
        self._process()

    # -- flow control and closing ---------------------------------------------
    def _update_reading(self) -> None:
        """Read while there is nothing to wait for; otherwise let TCP push back."""
        want = self.state == CLOSING or (
            self.state == OPEN and self._waiting is None and not self._write_paused
            and not self._server.stopping
        )
        if want != self._reading and self._transport is not None:
            self._reading = want
            if want:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()

    def wait_scope(self) -> asyncio.Timeout | None:
        return self._wait_scope

    def begin_shutdown(self) -> None:
        """Stop reading; say ``BYE shutdown`` now, or once the current line is answered."""
        if self.state != OPEN:
            return
        self._update_reading()
        self._process()

    def close(self, last_line: bytes | None) -> None:
        """Write ``last_line``, half-close, and drain input until the client closes."""
        if self.state != OPEN or self._transport is None:
            return
        self.state = CLOSING
        self._buffer = b""
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

    def unanswered(self) -> int:
        """Complete lines read but not answered (only at a forced close can there be any)."""
        if self.state != OPEN:
            return 0
        return self._buffer.count(b"\n") + (self._waiting is not None)

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
