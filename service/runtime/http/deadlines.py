"""The HTTP connections' read deadlines, kept by one sweeper rather than a timer per request.

aiohttp has no deadline for reading a request: a client that trickles its
header lines, or sends its headers and then trickles its body, holds its
connection, and for a body the handler awaiting it, for as long as it likes
(the slowloris attacks). The sweeper wakes four times per the shorter of
``http.header_timeout`` and ``http.body_timeout`` and looks at every
connection:

* **Headers.** A connection notes the sweep during which the bytes of a
  request head began to arrive (``header_since``; from the accept for the
  first). A head not whole ``header_timeout`` later closes the connection
  (nginx's ``client_header_timeout`` counts the same way).
* **Body.** While a request is in its handler (``request``, set by the API
  middleware) and its body has not all arrived, the sweep that first sees it
  notes itself (``body_since``). A body still not whole ``body_timeout``
  later fails the handler's read with :class:`~service.runtime.errors.RequestTimeout`:
  the middleware answers 408 problem+json, then the connection closes.

A timer armed and cancelled for each keep-alive request cost a few percent
of a cheap request; the request path here only writes two attributes. Cut
connections are counted (``http_header_timeouts_total``,
``http_body_timeouts_total``) and logged at info level.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable
from typing import Protocol

from aiohttp.web_request import BaseRequest

from service.runtime.errors import RequestTimeout
from service.runtime.log import get_logger
from service.runtime.metrics import CounterChild

log = get_logger("service.http")


class Watched(Protocol):
    """What the sweeper reads and writes on a connection (``http.server.HeaderTimeoutHandler``)."""

    header_since: int
    request: BaseRequest | None
    body_of: BaseRequest | None
    body_since: int

    @property
    def transport(self) -> asyncio.Transport | None: ...

    def force_close(self) -> None: ...


class Sweeper:
    """Checks every connection's header and body deadlines a few times per timeout."""

    SWEEPS_PER_TIMEOUT = 4

    def __init__(
        self,
        header_timeout: float,
        body_timeout: float,
        *,
        header_timeouts: CounterChild,
        body_timeouts: CounterChild,
    ) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.interval = min(header_timeout, body_timeout) / self.SWEEPS_PER_TIMEOUT
        # Whole sweeps per timeout: a deadline is kept within one interval past it.
        self.header_sweeps = math.ceil(header_timeout / self.interval - 1e-9)
        self.body_sweeps = math.ceil(body_timeout / self.interval - 1e-9)
        self.header_timeouts = header_timeouts
        self.body_timeouts = body_timeouts
        self.count = 1  # never 0: 0 means "nothing pending"

    async def run(self, connections: Callable[[], Iterable[Watched]]) -> None:
        """Sweep ``connections()`` forever (cancelled when the listener closes)."""
        while True:
            await asyncio.sleep(self.interval)
            self.sweep(connections())

    def sweep(self, connections: Iterable[Watched]) -> None:
        self.count += 1
        late_header = self.count - self.header_sweeps  # began at or before: too long ago
        late_body = self.count - self.body_sweeps  # first seen at or before (at a sweep)
        for conn in connections:
            request = conn.request
            if request is None:
                conn.body_of = None
                since = conn.header_since
                if since and since < late_header and conn.transport is not None:
                    conn.header_since = 0
                    self.header_timeouts.inc()
                    log.info(
                        "closing connection: request headers not complete in time",
                        timeout=self.header_timeout,
                    )
                    conn.force_close()
                continue
            body = request.content
            if body.is_eof():
                continue
            if conn.body_of is not request:
                conn.body_of, conn.body_since = request, self.count
            elif 0 < conn.body_since <= late_body:
                conn.body_since = 0  # cut once
                self.body_timeouts.inc()
                log.info(
                    "failing request: body not complete in time",
                    timeout=self.body_timeout,
                    method=request.method,
                    path=request.path,
                )
                body.set_exception(RequestTimeout(self.body_timeout))
