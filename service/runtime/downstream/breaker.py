"""A circuit breaker per downstream: fail fast while a downstream is known to be down.

States (Nygard, "Release It!"): *closed* counts consecutive failures and
opens at ``failures``; *open* refuses every call for ``reset_seconds``; then
*half-open* lets exactly one probe through: its success closes the circuit,
its failure opens it again. Only the downstream's own failures count: a call
cancelled by its caller (client gone, sibling failed, deadline) or refused
locally says nothing about the downstream's health, so it neither counts nor
closes, it only frees the probe slot. A library (aiobreaker, purgatory) would
add a dependency for about sixty lines; this one is written for asyncio's
single thread and needs no lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Ticket:
    """Permission for one call; ``probe`` marks the half-open state's single probe."""

    __slots__ = ("probe",)

    def __init__(self, probe: bool) -> None:
        self.probe = probe


_CALL, _PROBE = Ticket(False), Ticket(True)


class CircuitBreaker:
    def __init__(
        self, failures: int, reset_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._state = State.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> State:
        if self._state is State.OPEN and self._clock() - self._opened_at >= self.reset_seconds:
            self._state = State.HALF_OPEN
        return self._state

    def is_open(self) -> bool:
        return self.state is State.OPEN

    def refusing(self) -> bool:
        """True while :meth:`allow` would refuse a call: open, or half-open with its probe out.

        One clock read at most, no ticket: what a caller with many calls to
        make asks once, instead of paying a refusal (an exception) per call.
        """
        state = self.state
        return state is State.OPEN or (state is State.HALF_OPEN and self._probe_in_flight)

    def retry_after(self) -> float:
        """Seconds until the next probe may go through (0 unless open)."""
        if self.state is not State.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.reset_seconds - self._clock())

    def allow(self) -> Ticket | None:
        """A ticket if a call may go out now, else ``None``.

        In half-open exactly one caller gets a ticket marked ``probe`` until
        that probe ends; the ticket is how the outcome finds its way back
        (a call admitted before the circuit opened is not the probe).
        """
        state = self.state
        if state is State.CLOSED:
            return _CALL
        if state is State.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return _PROBE
        return None

    def record_success(self, ticket: Ticket) -> None:
        self._consecutive = 0
        if ticket.probe:
            self._probe_in_flight = False
        if self._state is not State.OPEN:
            self._state = State.CLOSED

    def record_failure(self, ticket: Ticket) -> None:
        if ticket.probe:
            self._probe_in_flight = False
            self._open()
            return
        self._consecutive += 1
        if self._state is State.CLOSED and self._consecutive >= self.failures:
            self._open()

    def record_neutral(self, ticket: Ticket) -> None:
        """The call ended without telling us anything (cancelled by its caller)."""
        if ticket.probe:
            self._probe_in_flight = False

    def _open(self) -> None:
        self._state = State.OPEN
        self._opened_at = self._clock()
        self._consecutive = 0
