"""tcp-ping's connection: a ``PONG`` answered inside ``data_received``, for a client that keeps up.

Against the TCP core both the server's core and the client's are nearly
saturated, so whatever the client spends per round trip shows in the rate.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Protocol

from service.tools.loadtest.protocols import LineConnection, Owner
from service.tools.loadtest.report import Measured


class PingOwner(Owner, Protocol):
    """What a :class:`PingConnection` reads of its driver on its hot path."""

    m: Measured
    sending: bool
    t_measure: float
    pongs: int

    def next_request(self) -> bytes: ...


class PingConnection(LineConnection):
    """tcp-ping in an unbounded closed loop: a ``PONG`` read answered in this one call.

    The same steps as :meth:`Driver._closed_loop_response` (record the latency,
    send the next ``PING`` at once), inlined into ``data_received``, and the
    answers counted in an int folded into the statuses at the end. Against the
    TCP core both the server's core and the client's are nearly saturated, so
    whatever the client spends per round trip shows in the rate: with this path
    the whole client takes about 8,700 user-space instructions per round trip,
    against 12,400 through the general one (callgrind, against a bare PONG
    server). Anything else (a split
    or merged read, an ``ERR``, the end of the run) takes the general path.
    """

    owner: PingOwner

    def __init__(self, owner: PingOwner, closed: asyncio.Future[None]) -> None:
        super().__init__(owner, closed)
        self.ping = owner.next_request()  # tcp-ping's pool is the one request
        self.latencies_us = owner.m.latencies_us

    def data_received(self, data: bytes) -> None:
        driver = self.owner
        if data != b"PONG\n" or self.buffer or not (self.busy and self.reusable and driver.sending):
            LineConnection.data_received(self, data)
            return
        now = perf_counter()
        self.answered += 1
        t0 = self.t0
        if t0 >= driver.t_measure:
            lat = self.latencies_us
            us = int((now - t0) * 1_000_000)
            lat[us] = lat.get(us, 0) + 1
            # Not last_done: the run's end is t_stop or later, and the answers
            # after t_stop take the general path, which sets it.
            driver.pongs += 1
        self.t0 = self.sent_at = now
        self.transport.write(self.ping)  # type: ignore[union-attr]  # set until connection_lost
