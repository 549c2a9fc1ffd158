"""One process's load: connections, the closed or open loop, and what it measured.

Closed loop (``--concurrency``): every connection sends its next request the
moment the previous answer is complete, like wrk. Latency is measured from
the real send time, so a server stall delays *sending* and hides itself
(coordinated omission): only ``concurrency`` requests see the stall.

Open loop (``--rate``): request *i* is due at ``start + i / rate`` whatever
the server does. A due request goes to an idle connection, or waits in the
backlog for one, and its latency is measured from its intended send time (as
wrk2 and oha's latency correction do), so a 1 s stall shows up as a second of
latency for every request that was due during it.

Only requests whose latency origin lies in the measured window (after
``--warmup``) are counted; every one of them is awaited (or timed out) before
the run ends, so the count matches what the server saw. Latencies go into a
plain dict of microseconds first (0.2 us per answer, against 4 us for a
Python HdrHistogram ``record_value``) and into the histogram once, at the end.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from functools import partial
from time import perf_counter

from service.tools.loadtest.ping import PingConnection
from service.tools.loadtest.plan import Plan
from service.tools.loadtest.protocols import (
    Connection,
    HttpConnection,
    LineConnection,
    connect_error_kind,
)
from service.tools.loadtest.report import Measured
from service.tools.loadtest.scenarios import NextRequest
from service.tools.loadtest.schedule import Schedule

CONNECT_BACKOFF = 0.05  # seconds before a slot reconnects after a failed or fruitless connection
SWEEP_INTERVAL = 0.1  # request timeouts are checked this often


class Driver(Schedule):
    """Runs ``plan`` in this process: owns the connections, and the schedule it inherits."""

    def __init__(
        self, plan: Plan, next_request: NextRequest, on_tick: Callable[[Driver], None] | None = None
    ) -> None:
        super().__init__(plan)
        self.next_request = next_request
        self.on_tick = on_tick
        self.protocol: type[Connection] = HttpConnection if plan.kind == "http" else LineConnection
        self.m = Measured()
        self.conns: set[Connection] = set()
        self.idle: list[Connection] = []
        self.started = False
        self.t_stop = 0.0
        self.last_done = 0.0
        self.finished = 0
        # An answer to the request in flight on a connection: record it, send the next.
        unbounded_closed = plan.rate is None and plan.requests is None
        self.on_response: Callable[[Connection, int | str], None] = (
            self._closed_loop_response if unbounded_closed else self._response
        )
        self.pongs = 0  # measured answers counted by PingConnection, folded in at the end
        if unbounded_closed and plan.kind == "tcp" and plan.scenario == "tcp-ping":
            self.protocol = PingConnection
        self._done: asyncio.Future[None] | None = None
        self._connected: asyncio.Future[None] | None = None
        self._attempted = 0

    @property
    def completed(self) -> int:
        """Measured requests finished so far, for progress: PingConnection counts its own."""
        return self.finished + self.pongs

    # -- the hot path: called from the connections' data_received -----------------

    def _closed_loop_response(self, conn: Connection, status: int | str) -> None:
        """:meth:`_response` for an unbounded closed loop, inlined: the common case.

        The connection stays busy and the next request goes out at once; every
        Python call saved here is client CPU taken off each round trip.
        """
        now = perf_counter()
        if conn.t0 >= self.t_measure:
            self._record(conn.t0, status, now)
        transport = conn.transport
        if self.sending and conn.reusable and transport is not None:
            conn.t0 = conn.sent_at = now
            transport.write(self.next_request())
            return
        conn.busy = False
        self.inflight -= 1
        if conn.reusable:
            self._next(conn, now)
        else:
            self._check_done()

    def _response(self, conn: Connection, status: int | str) -> None:
        now = perf_counter()
        conn.busy = False
        self.inflight -= 1
        if conn.t0 >= self.t_measure:
            self._record(conn.t0, status, now)
        if conn.reusable:
            self._next(conn, now)
        elif not self.sending and self.inflight == 0:
            self._check_done()

    def _record(self, t0: float, status: int | str, now: float) -> None:
        """A measured answer: its latency from ``t0`` and its status."""
        us = int((now - t0) * 1_000_000)
        lat = self.m.latencies_us
        lat[us] = lat.get(us, 0) + 1
        st = self.m.statuses
        st[status] = st.get(status, 0) + 1
        self.finished += 1
        self.last_done = now

    def _next(self, conn: Connection, now: float) -> None:
        """Give an available connection its next request, or park it."""
        if self.plan.rate is not None:
            if self.dispatched < self.due:
                self._dispatch(conn)
            elif self.sending:
                self.idle.append(conn)
            else:
                self._check_done()
        elif self.sending and self._ticket(now):
            self.inflight += 1
            conn.send(self.next_request(), now)
        else:
            self._check_done()

    # -- connection events ----------------------------------------------------------
    def on_ready(self, conn: Connection) -> None:
        self.conns.add(conn)
        if self.started:
            self._next(conn, perf_counter())
        else:
            self.idle.append(conn)

    def on_failure(self, conn: Connection, kind: str) -> None:
        now = perf_counter()
        if conn.busy:
            conn.busy = False
            self.inflight -= 1
            if conn.t0 >= self.t_measure:
                self.m.error(kind)
                self.finished += 1
                self.last_done = now
        elif now >= self.t_measure:
            self.m.error(kind)
        self._check_done()

    def on_lost(self, conn: Connection) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self._check_done()

    def _connect_failed(self, kind: str) -> None:
        """A failed connect is a failed request: it uses up a ticket so bounded runs end."""
        now = perf_counter()
        if self.plan.rate is not None:
            if self.dispatched < self.due:
                self.dispatched += 1
                if self.dispatched > self.first_measured and now >= self.t_measure:
                    self.m.error(kind)
                    self.finished += 1
            elif now >= self.t_measure:
                self.m.error(kind)
        elif now >= self.t_measure:
            if self.started and not self._ticket(now):
                return
            self.m.error(kind)
            self.finished += 1
        self._check_done()

    def _check_done(self) -> None:
        if (
            not self.sending
            and self.inflight == 0
            and self.dispatched >= self.due
            and self._done is not None
            and not self._done.done()
        ):
            self._done.set_result(None)

    # -- the run --------------------------------------------------------------------

    async def _slot(self, index: int) -> None:
        """Keep one connection open while sending: connect, wait for it to close, repeat."""
        loop = asyncio.get_running_loop()
        plan = self.plan
        while self.sending:
            closed: asyncio.Future[None] = loop.create_future()
            try:
                async with asyncio.timeout(plan.timeout):
                    _, conn = await loop.create_connection(
                        partial(self.protocol, self, closed), plan.host, plan.port
                    )
            except OSError as exc:
                self._connect_failed(connect_error_kind(exc))
                conn = None
            finally:
                self._attempted += 1
                if (
                    self._attempted == plan.concurrency
                    and self._connected is not None
                    and not self._connected.done()
                ):
                    self._connected.set_result(None)
            if conn is not None:
                await closed
                if conn.answered:
                    continue
            await asyncio.sleep(CONNECT_BACKOFF)

    async def _sweep(self) -> None:
        """Time out requests that take longer than ``--timeout``; report progress."""
        timeout = self.plan.timeout
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = perf_counter()
            for conn in [c for c in self.conns if c.busy and now - c.sent_at > timeout]:
                conn.fail("timeout")
            if self.on_tick is not None:
                self.on_tick(self)

    def _start(self) -> None:
        self.started = True
        self.t_sched = perf_counter()
        if self.plan.warmup <= 0:
            self._begin_measure(self.t_sched)
        if self.plan.rate is not None:
            self._tick()
        else:
            idle, self.idle = self.idle, []
            for conn in idle:
                if conn.transport is not None:
                    self._next(conn, perf_counter())

    def stop_sending(self) -> None:
        """The measured window is over: send nothing more; what is due but unsent is lost."""
        self.sending = False
        self.t_stop = perf_counter()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        unsent = self.due - max(self.dispatched, self.first_measured)
        if unsent > 0 and math.isfinite(self.t_measure):
            self.m.errors["unsent"] = self.m.errors.get("unsent", 0) + unsent
        self.due = self.dispatched
        self._check_done()

    async def run(self, ready: Callable[[], Awaitable[None]] | None = None) -> Measured:
        """Connect, (wait for the other workers,) warm up, measure, drain; then report."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._connected = loop.create_future()
        plan = self.plan
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._slot(i), name=f"loadtest:conn-{i}")
                for i in range(plan.concurrency)
            ]
            tasks.append(tg.create_task(self._sweep(), name="loadtest:sweep"))
            try:
                await asyncio.wait([self._connected], timeout=plan.timeout)
                if ready is not None:
                    await ready()
                self._start()
                if plan.warmup > 0:
                    await asyncio.sleep(plan.warmup)
                    self._begin_measure(perf_counter())
                await asyncio.wait([self._done], timeout=plan.duration)
                self.stop_sending()
                if not self._done.done():
                    await asyncio.wait([self._done], timeout=plan.grace)
                for conn in [c for c in self.conns if c.busy]:
                    conn.fail("timeout")
            finally:
                self.sending = False
                for conn in list(self.conns):
                    conn.close()
                for task in tasks:
                    task.cancel()
        if self.pongs:
            self.m.statuses["PONG"] = self.m.statuses.get("PONG", 0) + self.pongs
            self.pongs = 0
        if math.isfinite(self.t_measure):
            end = max(self.last_done, self.t_stop)
            self.m.duration = max(end - self.t_measure, 1e-9)
        return self.m
