"""The pipeline's front door: events in, ids out, never more than the ingest queue holds.

An event is *acknowledged* (its id handed to the client) once it is in the
ingest queue. When the queue is full, intake refuses at once
(:class:`~service.runtime.errors.IntakeFull`: HTTP 429, TCP stops reading,
then ``ERR overloaded``) instead of buffering more, so memory stays flat
however hard clients push; while draining it refuses with
:class:`~service.runtime.errors.IntakeClosed` (HTTP 503, TCP ``BYE shutdown``).

Transports (the HTTP route, a TCP line handler) use these methods and map
the two errors; they know nothing of queues or workers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from service.runtime.errors import IntakeClosed, IntakeFull
from service.runtime.ids import IdSequence, process_prefix
from service.runtime.metrics import Metrics
from service.runtime.pipeline.batchqueue import BatchQueue

# Queue item: id, value, acknowledged at (monotonic).
Item = tuple[str, Any, float]

RETRY_AFTER_SECONDS = 1


class Intake:
    """Offers events to the ingest queue; ``closed`` refuses them (start-up, drain, failure)."""

    def __init__(
        self, capacity: int, metrics: Metrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.queue: BatchQueue[Item] = BatchQueue(capacity)
        # The acknowledgement time; with tracing on it also carries the producer's
        # span context (service.runtime.tracing.core.Acked).
        self._clock = clock
        # Ids sort roughly by time and never repeat across restarts (same second,
        # same sink file) or replicas: start time, random, counter.
        self.ids = IdSequence(process_prefix(random_bytes=4, with_time=True))
        self.closed = True  # until the pipeline starts
        self.accepted = 0
        self._m_accepted = metrics.pipeline_events.labels("ingest", "accepted")
        self._m_rejected = {
            r: metrics.pipeline_rejected.labels(r) for r in ("full", "closed", "invalid")
        }

    def close(self) -> None:
        """Refuse from now on, and wake every waiting offer to refuse it too."""
        self.closed = True
        self.queue.wake_all()

    def offer_nowait(self, event: Any) -> str:
        """Enqueue one validated event and return its id, or raise IntakeFull / IntakeClosed."""
        if self.closed:
            self._m_rejected["closed"].inc()
            raise IntakeClosed
        queue = self.queue
        if queue.full():
            self._m_rejected["full"].inc()
            raise IntakeFull(1, RETRY_AFTER_SECONDS)
        event_id = self.ids.new()
        queue.append_nowait((event_id, event, self._clock()))
        self.accepted += 1
        self._m_accepted.value += 1
        return event_id

    def offer_batch_nowait(self, events: list[Any]) -> list[str]:
        """Enqueue all of ``events`` or none of them (IntakeFull / IntakeClosed)."""
        n = len(events)
        if self.closed:
            self._m_rejected["closed"].inc(n)
            raise IntakeClosed
        if n > self.queue.room():
            self._m_rejected["full"].inc(n)
            raise IntakeFull(n, RETRY_AFTER_SECONDS)
        now = self._clock()
        ids = self.ids.many(n)
        self.queue.put_nowait(
            [(event_id, event, now) for event_id, event in zip(ids, events, strict=True)]
        )
        self.accepted += n
        self._m_accepted.value += n
        return ids

    async def offer(self, event: Any, timeout: float) -> str:
        """Like :meth:`offer_nowait`, but wait up to ``timeout`` seconds for room (TCP)."""
        if not self.closed and self.queue.full():
            # Wait for a worker to free a slot (waiters are woken one per batch
            # taken, in order); a drain wakes every waiter to refuse it with
            # IntakeClosed. Nothing is queued before the final offer_nowait, so
            # a cancelled or timed-out wait leaves the event not taken.
            try:
                async with asyncio.timeout(timeout):
                    while not self.closed and self.queue.full():
                        await self.queue.wait_for_room()
            except TimeoutError:
                self._m_rejected["full"].inc()
                raise IntakeFull(1, RETRY_AFTER_SECONDS) from None
        return self.offer_nowait(event)

    @property
    def full(self) -> bool:
        """True while the ingest queue has no room for one more event."""
        return self.queue.full()

    def ensure_room(self) -> None:
        """Raise IntakeClosed / IntakeFull now if no event could be taken (a pre-check)."""
        if self.closed:
            self._m_rejected["closed"].inc()
            raise IntakeClosed
        if self.queue.full():
            self._m_rejected["full"].inc()
            raise IntakeFull(1, RETRY_AFTER_SECONDS)

    def count_invalid(self, n: int = 1) -> None:
        """Count events a transport refused as malformed (they never reach a queue)."""
        self._m_rejected["invalid"].inc(n)
