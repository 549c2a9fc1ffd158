"""A bulkhead per downstream: at most ``size`` calls in flight to it at once.

Without it one slow downstream collects every waiting request and starves
the others of connections, memory and file descriptors. An asyncio service
exists to hold many waiting calls, so the default size is in the thousands
and a call that finds the bulkhead full waits for a slot as long as its
deadline still leaves time for a call: the deadline minus a typical call's
duration (a moving mean of how long calls held their slot). When it does
not, at entry or once a slot is free, the call is refused with
:class:`BulkheadFull` (counted as "rejected", answered 503) at once, rather
than started to run out of time (504) while it holds a slot another call
could use. A hopelessly slow downstream thus sheds within the deadline: its
slow calls raise the typical duration until waiting is no longer worth it.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

from service.runtime.downstream.deadline import Deadline
from service.runtime.downstream.errors import BulkheadFull

# Weight of the latest call in the moving mean of slot hold times.
_SMOOTHING = 0.1


class Bulkhead:
    def __init__(self, service: str, size: int) -> None:
        self.service = service
        self.size = size
        # Seconds a call typically holds its slot; 0 until a call has ended.
        self.typical = 0.0
        self._slots = asyncio.Semaphore(size)

    def slot(self, deadline: Deadline) -> Slot:
        """``async with bulkhead.slot(deadline):`` holds a slot around one call."""
        return Slot(self, deadline)

    async def acquire(self, deadline: Deadline) -> None:
        """Take a slot, waiting while ``deadline`` leaves time for a typical call."""
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: does not suspend
            return
        wait = deadline.remaining() - self.typical
        if wait <= 0:
            raise BulkheadFull(self.service)
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError:
            raise BulkheadFull(self.service) from None
        if deadline.remaining() < self.typical:
            # Calls got slower while this one waited: too late for one now.
            self._slots.release()
            raise BulkheadFull(self.service)

    def release(self, held: float) -> None:
        """Give the slot back; ``held`` is how long the call had it."""
        self._slots.release()
        if self.typical:
            self.typical += (held - self.typical) * _SMOOTHING
        else:
            self.typical = held  # the first call: nothing to smooth against yet


class Slot:
    """One call's hold on a bulkhead slot (an async context manager)."""

    __slots__ = ("_bulkhead", "_deadline", "_since")

    def __init__(self, bulkhead: Bulkhead, deadline: Deadline) -> None:
        self._bulkhead = bulkhead
        self._deadline = deadline
        self._since = 0.0

    async def __aenter__(self) -> None:
        await self._bulkhead.acquire(self._deadline)
        self._since = time.monotonic()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bulkhead.release(time.monotonic() - self._since)
