"""A bounded asyncio FIFO of batches whose bound counts items, not batches.

Why not ``asyncio.Queue``: the pipeline moves events in batches (an HTTP
request carries up to ``http.max_events``, a sink write up to
``pipeline.batch_size``), and one queue operation per *event* cost more
than half of the pipeline's CPU time per event. Here a put or get moves a
whole batch, while the capacity is still counted in events, so "the ingest
queue holds at most ``ingest_capacity`` events" stays true and the memory
bound with it.

* ``put_nowait`` never waits: the caller checks :meth:`room` first (the
  intake's all-or-nothing check);
* ``append_nowait`` adds a single item (a TCP line) to the newest batch when
  that batch is one it made itself, so items that arrive one at a time do
  not cost a list, a deque entry and a merge step each;
* ``put`` waits for room (a batch larger than the whole capacity is let in
  when the queue is empty, so it cannot wait forever);
* ``get(limit)`` returns the oldest batch, topped up with the following ones
  while the total stays within ``limit``, or split at ``limit``;
* :data:`STOP` is a marker batch a consumer ends on; it is never merged.

Waiters are woken in order: a getter per batch put, a putter per item of
room freed.
Only the event loop thread may use a queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# The stop marker: put it after the last batch; a consumer's get returns it as is.
STOP: list[Any] = []
# append_nowait starts a new batch after this many items (gets split larger ones anyway).
APPEND_LIMIT = 256


class BatchQueue(Generic[T]):
    """A FIFO of lists of ``T`` holding at most ``capacity`` items in all."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._batches: deque[list[T]] = deque()
        self._size = 0
        # The batch append_nowait is filling, while it is still the newest one queued.
        self._open: list[T] | None = None
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()

    def qsize(self) -> int:
        """Items (not batches) in the queue."""
        return self._size

    def room(self) -> int:
        return self.capacity - self._size

    def full(self) -> bool:
        return self._size >= self.capacity

    def put_nowait(self, batch: list[T]) -> None:
        """Append ``batch`` (the caller has checked :meth:`room`; STOP always fits)."""
        self._batches.append(batch)
        self._size += len(batch)
        _wake(self._getters, 1)

    def append_nowait(self, item: T) -> None:
        """Append one item (the caller has checked :meth:`full`).

        It joins the newest batch only if that batch was made here and has
        not been taken: a list a producer handed to :meth:`put_nowait` is
        never changed (the producer may still hold it).
        """
        batches, current = self._batches, self._open
        if (
            current is not None
            and batches
            and batches[-1] is current
            and len(current) < APPEND_LIMIT
        ):
            current.append(item)
        else:
            current = self._open = [item]
            batches.append(current)
        self._size += 1
        if self._getters:  # a function call per TCP line saved while consumers are busy
            _wake(self._getters, 1)

    async def put(self, batch: list[T]) -> None:
        """Append ``batch`` once there is room for all of it."""
        while self._size and self._size + len(batch) > self.capacity:
            await self.wait_for_room()
        self.put_nowait(batch)

    async def wait_for_room(self) -> None:
        """Wait until an item leaves the queue, or :meth:`wake_all` is called."""
        await _wait(self._putters, lambda: self.room() > 0)

    def wake_all(self) -> None:
        """Wake every ``wait_for_room`` caller, e.g. to tell them the intake has closed."""
        while self._putters:
            waiter = self._putters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def get_nowait(self, limit: int) -> list[T]:
        """The next batch, merged with the following ones up to ``limit`` items, or split.

        Raises ``asyncio.QueueEmpty`` when there is nothing to get.
        """
        batches = self._batches
        if not batches:
            raise asyncio.QueueEmpty
        batch = batches.popleft()
        if batch is STOP:
            return batch
        if not batches:
            self._open = None  # the consumer owns every list taken; none is appended to
        if len(batch) > limit:
            batches.appendleft(batch[limit:])
            batch = batch[:limit]
        elif batches and batches[0] is not STOP and len(batch) + len(batches[0]) <= limit:
            batch = list(batch)  # merged into a copy: a producer may still hold its list
            while batches and batches[0] is not STOP and len(batch) + len(batches[0]) <= limit:
                batch.extend(batches.popleft())
        self._size -= len(batch)
        # One waiter per free slot (each needs at least one): waking only one
        # would strand the others while the queue sits empty.
        _wake(self._putters, self.room())
        return batch

    async def get(self, limit: int) -> list[T]:
        """Like :meth:`get_nowait`, waiting while the queue is empty."""
        while not self._batches:
            await _wait(self._getters, lambda: bool(self._batches))
        return self.get_nowait(limit)


async def _wait(waiters: deque[asyncio.Future[None]], usable: Callable[[], bool]) -> None:
    """Wait in line in ``waiters`` until woken.

    A waiter cancelled before its wake-up leaves the line; one cancelled
    after it passes the wake-up on while ``usable()`` says there is still
    something for the next waiter (a wake-up must never be lost).
    """
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    except BaseException:
        if not waiter.done():
            waiter.cancel()
            waiters.remove(waiter)
        elif not waiter.cancelled() and usable():
            _wake(waiters, 1)
        raise


def _wake(waiters: deque[asyncio.Future[None]], n: int) -> None:
    """Wake up to ``n`` waiters, oldest first, skipping those already cancelled."""
    while n > 0 and waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            n -= 1
