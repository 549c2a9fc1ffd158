"""Connections over ``http.max_connections``: a fast 503, then closed.

Each open connection holds a file descriptor, buffers and, with a request in
it, a handler task; past a cap the service would trade every client's
latency (and finally its descriptors) for one more connection. Over the cap
the accepted connection never reaches aiohttp: :class:`Refusal` writes a
ready-made 503 problem+json with ``Connection: close`` and ``Retry-After``
the moment it is accepted, half-closes, and closes when the client does (or
after :data:`LINGER` seconds). It reads and discards what the client sends
meanwhile: closing a socket with unread request bytes would reset the
connection, and the reset can destroy the 503 before the client reads it
(the "lingering close" of RFC 9112 9.6).
"""

from __future__ import annotations

import asyncio
from typing import cast

import orjson

from service.runtime.http.problem import problem_doc
from service.runtime.log import get_logger

log = get_logger("service.http")

# Seconds a refused connection may stay open for its client to read the answer and hang up.
LINGER = 1.0
# Seconds between two warnings that connections are being refused (each one is counted).
WARN_EVERY = 10.0


def refusal_response(max_connections: int) -> bytes:
    """The whole 503 answer, made once per server."""
    body = orjson.dumps(
        problem_doc(
            503,
            f"The server has its maximum of {max_connections} connections open; retry later.",
            slug="unavailable",
        )
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class Refusal(asyncio.Protocol):
    """One connection over the cap: the 503 at once, then closed."""

    def __init__(self, response: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self._response = response
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but are one.
        transport = cast(asyncio.Transport, transport)
        transport.write(self._response)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self._loop.call_later(LINGER, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass  # the request: already answered

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
