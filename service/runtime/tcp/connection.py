"""One TCP client: line framing, ordered answers, flow control, and a clean close.

A connection is a plain :class:`asyncio.Protocol`, not a stream reader and a
task: an idle client then costs one small object instead of a suspended task
and two stream buffers (about 1.3 KB against 5 KB per connection on uvloop),
and answering a ``PING`` is a callback, not a task switch. A task exists only
while an answer has to wait (for room in the pipeline, say).

Answers stay in order because a connection handles one line at a time and
never starts the next before the current one is answered: while it waits for
a later answer or for the client to read its answers, it stops reading
(``pause_reading``), the unhandled bytes stay in its buffer, and TCP flow
control pushes back on the client. Memory per client is therefore bounded by
one read chunk, one line (``tcp.max_line_bytes``) and the transport's write
buffer high-water mark.

State, flow control, timers and the lingering close are in :mod:`.closing`.
"""

from __future__ import annotations

import asyncio
from typing import cast

from service.runtime.errors import IntakeClosed, IntakeFull
from service.runtime.log import get_logger
from service.runtime.tcp.answers import (
    BYE_SHUTDOWN,
    ERR_BARE_CR,
    ERR_INTERNAL,
    ERR_OVERLOADED,
    ERR_TOO_LONG,
    PONG,
)
from service.runtime.tcp.closing import CLOSED, OPEN, Host, LingeringProtocol
from service.runtime.tcp.handler import Answer, Later

log = get_logger("service.tcp")

# Answers are written in one call per read chunk, or at least this often, so
# a chunk of tiny bad lines cannot build an unbounded list of long answers.
FLUSH_BYTES = 64 * 1024


class Connection(LingeringProtocol):
    """The protocol of one client connection; created by ``TcpServer``."""

    __slots__ = ("_buffer", "_scanned", "_wait_scope", "accepted")

    def __init__(self, server: Host) -> None:
        super().__init__(server)
        self._buffer: bytes | bytearray = b""
        self._scanned = 0  # bytes at the buffer's start known to hold no newline
        self._wait_scope: asyncio.Timeout | None = None
        self.accepted = False

    def _clear(self) -> None:
        self._buffer = b""

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
        if (
            data == b"PING\n"
            and not self._buffer
            and self._waiting is None
            and not self._write_paused
            and self.state == OPEN
            and transport is not None
        ):
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

        None when the answer comes later (the line waits in a task), and
        ``BYE_SHUTDOWN`` when the connection must end after it.
        """
        server = self._server
        if line.endswith(b"\r"):
            line = line[:-1]
        if b"\r" in line:
            server.messages_error.value += 1
            return ERR_BARE_CR
        if b"PING" in line and line.strip() == b"PING":  # no copy for any other line
            server.messages_ok.value += 1
            return PONG
        try:
            answer: Answer = server.handler.handle(bytes(line))  # bytes(b) is b: no copy
        except IntakeClosed:
            return BYE_SHUTDOWN
        except Exception:
            # A bug behind the handler must not cost the connection its later answers.
            log.exception("tcp: line handler failed")
            server.messages_error.value += 1
            return ERR_INTERNAL
        if type(answer) is bytes:
            if answer is not BYE_SHUTDOWN:
                if answer.startswith(b"ERR"):
                    server.messages_error.value += 1
                else:
                    server.messages_ok.value += 1
            return answer
        self._wait_for(cast(Later, answer))
        return None

    def _wait_for(self, later: Later) -> None:
        """Stop reading and wait (in a task, the only one a connection ever has) for the answer."""
        self._waiting = self._server.spawn(self._answer_later(later))
        self._update_reading()

    async def _answer_later(self, later: Later) -> None:
        server = self._server
        answer: bytes | None
        try:
            # The scope's deadline is None until shutdown, which moves it before
            # the end of the grace period (TcpServer.finish).
            async with asyncio.timeout_at(server.wait_deadline()) as scope:
                self._wait_scope = scope
                answer = await later()
        except (IntakeFull, TimeoutError):
            answer = ERR_OVERLOADED
        except IntakeClosed:
            answer = None
        except Exception:
            log.exception("tcp: line handler failed")
            answer = ERR_INTERNAL
        finally:
            self._wait_scope = None
            self._waiting = None
        if self.state != OPEN:
            return
        if answer is None or answer is BYE_SHUTDOWN:
            self.close(BYE_SHUTDOWN)
            return
        if answer.startswith(b"ERR"):
            server.messages_error.value += 1
        else:
            server.messages_ok.value += 1
        assert self._transport is not None
        self._transport.write(answer)
        self.last_active = server.now()
        self._process()

    # -- shutdown -------------------------------------------------------------
    def wait_scope(self) -> asyncio.Timeout | None:
        return self._wait_scope

    def begin_shutdown(self) -> None:
        """Stop reading; say ``BYE shutdown`` now, or once the current line is answered."""
        if self.state != OPEN:
            return
        self._update_reading()
        self._process()

    def unanswered(self) -> int:
        """Complete lines read but not answered (only at a forced close can there be any)."""
        if self.state != OPEN:
            return 0
        return self._buffer.count(b"\n") + (self._waiting is not None)
