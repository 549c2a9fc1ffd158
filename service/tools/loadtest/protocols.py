"""Client connections on raw asyncio protocols: HTTP/1.1 keep-alive and line-based TCP.

Why not ``aiohttp.ClientSession``: its per-request task, stream reader and
response object cost more CPU than the server under test spends, so it
measured only ~0.7 of wrk. Here a connection is a small state machine driven
by ``data_received`` callbacks; the next request is written from inside the
callback that completed the previous one, with no task switch at all.

HTTP responses go through httptools (llhttp, the parser of Node.js): framing
by Content-Length or chunked encoding, keep-alive rules and malformed input
are handled by a real parser, not by string searching.

A connection reports to its :class:`Owner` (the driver), which decides what
to send next and records results.
"""

from __future__ import annotations

import asyncio
import socket
from time import perf_counter
from typing import Protocol, cast

import httptools

MAX_LINE_BYTES = 1 << 20  # a TCP answer longer than this is garbage, not a line


class Owner(Protocol):
    def on_ready(self, conn: Connection) -> None: ...
    def on_response(self, conn: Connection, status: int | str) -> None: ...
    def on_failure(self, conn: Connection, kind: str) -> None: ...
    def on_lost(self, conn: Connection) -> None: ...


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight.

    ``t0`` is where the latency of the request in flight is measured from:
    the send time in a closed loop, the *intended* send time in an open loop.
    ``sent_at`` is the real send time, for the request timeout.
    """

    def __init__(self, owner: Owner, closed: asyncio.Future[None]) -> None:
        self.owner = owner
        self.on_response = owner.on_response  # bound once: it runs for every answer
        self.closed = closed
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.reusable = True
        self.answered = 0
        self.t0 = 0.0
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.owner.on_ready(self)

    def send(self, data: bytes, t0: float) -> None:
        self.t0 = t0
        self.sent_at = perf_counter()
        self.busy = True
        assert self.transport is not None
        self.transport.write(data)

    def fail(self, kind: str) -> None:
        """Count the request in flight (if any) as failed with ``kind`` and drop the connection."""
        transport = self.transport
        if transport is None:
            return
        self.reusable = False
        self.owner.on_failure(self, kind)
        transport.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.reusable = False
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.reusable = False
        if self.busy:
            # EOF or RST with a request in flight: the server dropped it.
            self.owner.on_failure(self, "closed" if exc is None else "reset")
        self.owner.on_lost(self)
        if not self.closed.done():
            self.closed.set_result(None)


class HttpConnection(Connection):
    """HTTP/1.1 over one keep-alive connection, responses parsed by httptools."""

    def __init__(self, owner: Owner, closed: asyncio.Future[None]) -> None:
        super().__init__(owner, closed)
        # httptools looks callbacks up once, here: only on_message_complete is
        # defined, so headers and body bytes never cross into Python.
        self.parser = httptools.HttpResponseParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            raise  # a bug in our own callback, not the server's fault
        except httptools.HttpParserError:
            self.fail("bad_response")

    def on_message_complete(self) -> None:
        if self.transport is None:
            return
        if not self.busy:  # an answer nobody asked for
            self.fail("bad_response")
            return
        parser = self.parser
        if not parser.should_keep_alive():
            self.reusable = False
        self.answered += 1
        self.on_response(self, parser.get_status_code())
        if not self.reusable and self.transport is not None:
            self.transport.close()


class LineConnection(Connection):
    """The service's TCP line protocol: one ``\\n``-terminated answer per line sent.

    The status of an answer is its first word (``PONG``, ``OK``), or the code
    after ``ERR`` (``ERR overloaded``); a line the server sends unasked (``BYE
    shutdown``, ``ERR busy`` on accept) counts as an error of that kind.
    """

    def __init__(self, owner: Owner, closed: asyncio.Future[None]) -> None:
        super().__init__(owner, closed)
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        if data == b"PONG\n" and self.busy and not self.buffer:
            # The commonest read of a tcp-ping run, answered without slicing.
            self.answered += 1
            self.on_response(self, "PONG")
            return
        if self.buffer:
            data = self.buffer + data
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._line(data[start:end])
            start = end + 1
            if self.transport is None:
                return
        self.buffer = data[start:]
        if len(self.buffer) > MAX_LINE_BYTES:
            self.fail("bad_response")

    def _line(self, line: bytes) -> None:
        status = line_status(line)
        if not self.busy:
            self.owner.on_failure(self, status.lower().replace(" ", "_"))
            return
        self.answered += 1
        self.on_response(self, status)


def line_status(line: bytes) -> str:
    if line == b"PONG":  # the hot case first
        return "PONG"
    words = line.rstrip(b"\r").decode("utf-8", "replace").split(" ", 2)
    if words[0] == "ERR" and len(words) > 1:
        return f"ERR {words[1]}"
    return words[0][:32] or "empty"


def connect_error_kind(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError):
        return "connect_timeout"
    if isinstance(exc, socket.gaierror):
        return "dns"
    return "connect"
