"""Followers of the delivered events (``GET /v1/events/stream``), each with a bounded buffer.

The sink writer calls :meth:`StreamHub.publish` once per durable batch. That
call costs O(subscribers), never waits, and never grows memory past each
subscriber's bound: a batch is encoded into one NDJSON chunk once, shared
by every subscriber, and a subscriber whose unread events would go over
``limit`` is cut off (counted in ``stream_subscribers_cut_off_total``) and
told so through its ``on_cutoff`` callback (the HTTP handler aborts the
connection, which also ends a write blocked on a client that stopped
reading). A slow reader therefore costs itself its stream, never the
pipeline its throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence

from service.runtime.log import get_logger
from service.runtime.metrics import Metrics

log = get_logger("service.stream")


class Subscription:
    """One follower's buffer of NDJSON chunks, at most ``limit`` events deep."""

    __slots__ = ("_chunks", "_on_cutoff", "_pending", "_wakeup", "cut_off", "limit")

    def __init__(self, limit: int, on_cutoff: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.cut_off = False
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._pending = 0
        self._wakeup = asyncio.Event()
        self._on_cutoff = on_cutoff

    @property
    def pending(self) -> int:
        """Events buffered and not yet taken by the reader."""
        return self._pending

    def push(self, chunk: bytes, count: int) -> bool:
        """Buffer one chunk of ``count`` events; False (and cut off) when over the limit."""
        if self.cut_off:
            return False
        # An empty buffer always takes one chunk, so a batch larger than the
        # limit does not cut off every reader; the bound is limit + one batch.
        if self._pending and self._pending + count > self.limit:
            self.cut_off = True
            self._chunks.clear()
            self._pending = 0
            self._wakeup.set()
            if self._on_cutoff is not None:
                self._on_cutoff()
            return False
        self._chunks.append((chunk, count))
        self._pending += count
        self._wakeup.set()
        return True

    async def chunks(
        self, stop: Callable[[], bool], poll: float = 0.2
    ) -> AsyncGenerator[bytes, None]:
        """Yield buffered chunks (all that is waiting, joined) until cut off or ``stop()``.

        ``stop`` is checked at least every ``poll`` seconds, so a follower
        notices shutdown (or its client going away) without any event flowing.
        """
        while not self.cut_off and not stop():
            if not self._chunks:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll):
                        await self._wakeup.wait()
                continue
            parts = [chunk for chunk, _ in self._chunks]
            self._chunks.clear()
            self._pending = 0
            yield parts[0] if len(parts) == 1 else b"".join(parts)


class StreamHub:
    """Fans delivered batches out to the current subscriptions."""

    def __init__(self, metrics: Metrics, limit: int) -> None:
        self.limit = limit
        self._subs: set[Subscription] = set()
        self._cutoffs = metrics.stream_cutoffs.labels()
        metrics.stream_subscribers.set_function(lambda: len(self._subs))
        # A follower's request task is renamed into this group while it follows.
        self.task_prefix = metrics.register_task_group("stream")

    def __len__(self) -> int:
        return len(self._subs)

    def publish(self, lines: Sequence[bytes]) -> None:
        """Hand one durable batch (encoded lines, no line endings) to every subscription."""
        if not self._subs or not lines:
            return
        chunk = b"\n".join(lines) + b"\n"
        count = len(lines)
        for sub in list(self._subs):
            if not sub.push(chunk, count):
                self._subs.discard(sub)
                self._cutoffs.inc()
                log.info("stream subscriber cut off: it fell behind", limit=sub.limit)

    @contextlib.contextmanager
    def subscribe(self, on_cutoff: Callable[[], None] | None = None) -> Iterator[Subscription]:
        """A subscription for the life of the ``with`` block."""
        sub = Subscription(self.limit, on_cutoff)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)
