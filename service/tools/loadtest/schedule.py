"""When requests go out: the closed loop's budget and the open loop's schedule.

Closed loop (``--concurrency``): a connection sends its next request the
moment its previous answer is complete; ``--requests`` is a budget of
measured sends. Open loop (``--rate``): request *i* is due at
``t_sched + i / rate`` whatever the server does, and its latency is measured
from then (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import math
from time import perf_counter

from service.tools.loadtest.plan import Plan
from service.tools.loadtest.protocols import Connection
from service.tools.loadtest.scenarios import NextRequest

MIN_TICK = 0.001  # the open loop dispatches what is due at most this often (timer resolution)


class Schedule:
    """The send schedule of a driver (:class:`~.driver.Driver` inherits it)."""

    # The driver's own state that the schedule reads and moves.
    next_request: NextRequest
    idle: list[Connection]

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.sending = True
        self.t_sched = 0.0  # the open loop's time zero
        self.t_measure = math.inf  # latency origins from here on are measured
        self.budget = plan.requests  # closed loop: measured sends left; None: unbounded
        # The open loop's requests are numbered: request i is due at t_sched + i / rate.
        # Those in [dispatched, due) wait for a connection (the backlog: two ints, so
        # an overloaded target cannot grow the client's memory); from first_measured on
        # they are measured; the loop stops scheduling at limit (--requests).
        self.due = 0
        self.dispatched = 0
        self.first_measured = 0
        self.limit = math.inf
        self.inflight = 0
        self._tick_handle: asyncio.TimerHandle | None = None

    def _check_done(self) -> None:
        raise NotImplementedError

    def _ticket(self, now: float) -> bool:
        """Closed loop: may one more request start now? (``--requests`` counts them.)"""
        if self.budget is None or now < self.t_measure:
            return True
        if self.budget == 0:
            self.sending = False
            return False
        self.budget -= 1
        if self.budget == 0:
            self.sending = False
        return True

    def _dispatch(self, conn: Connection) -> None:
        """Open loop: send the oldest due request on ``conn``, timed from when it was due."""
        rate = self.plan.rate
        assert rate is not None
        intended = self.t_sched + self.dispatched / rate
        self.dispatched += 1
        self.inflight += 1
        conn.send(self.next_request(), intended)

    def _tick(self) -> None:
        """Open loop: hand out every request that is due by now, then sleep till the next."""
        self._tick_handle = None
        if not self.sending:
            return
        rate = self.plan.rate
        assert rate is not None
        self.due = int(min((perf_counter() - self.t_sched) * rate + 1, self.limit))
        idle = self.idle
        while idle and self.dispatched < self.due:
            self._dispatch(idle.pop())
        if self.due >= self.limit:
            self.sending = False
            self._check_done()
            return
        delay = max(self.t_sched + self.due / rate - perf_counter(), MIN_TICK)
        self._tick_handle = asyncio.get_running_loop().call_later(delay, self._tick)

    def _begin_measure(self, now: float) -> None:
        """Requests whose latency origin is ``now`` or later are measured."""
        self.t_measure = now
        rate = self.plan.rate
        if rate is not None:
            self.first_measured = math.ceil((now - self.t_sched) * rate)
            if self.plan.requests is not None:
                self.limit = self.first_measured + self.plan.requests
