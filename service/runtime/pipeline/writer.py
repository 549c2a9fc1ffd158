"""The sink writer: batches of encoded lines, group-committed to the sink, retried whole.

One task takes encoded lines from the last queue and writes them in batches
of up to ``pipeline.batch_size``. An event counts as *delivered* once its
batch's ``write_batch`` returned (the sink has made it durable); a failed
write is retried whole, with a backoff, never split or dropped (the sink
leaves nothing of a failed batch behind). Delivered batches are published
to the stream subscribers.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from service.runtime.log import get_logger
from service.runtime.metrics import Metrics
from service.runtime.pipeline.batchqueue import STOP, BatchQueue
from service.runtime.pipeline.sinks import Sink, SinkLine
from service.runtime.pipeline.stream import StreamHub

if TYPE_CHECKING:
    from service.runtime.tracing.core import Tracing

log = get_logger("service.pipeline")

# What the last queue holds: an encoded line and when its event was acknowledged.
Encoded = tuple[SinkLine, float]

_RETRY_FIRST, _RETRY_MAX = 0.05, 2.0


class SinkWriter:
    """Moves encoded lines from ``queue`` to ``sink``; :meth:`run` ends on the stop marker."""

    def __init__(
        self,
        queue: BatchQueue[Encoded],
        sink: Sink,
        hub: StreamHub,
        metrics: Metrics,
        batch_size: int,
        flush_interval: float,
        *,
        tracing: Tracing | None = None,
    ) -> None:
        self.queue = queue
        self._tracing = tracing
        self.sink = sink
        self.hub = hub
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.delivered = 0
        backend = sink.backend
        self._m_delivered = metrics.pipeline_events.labels("sink", "delivered")
        self._m_latency = metrics.pipeline_latency.labels()
        self._m_batch = metrics.sink_batch.labels(backend)
        self._m_write = metrics.sink_write.labels(backend)
        self._m_failures = metrics.sink_failures.labels(backend)

    async def run(self) -> None:
        queue = self.queue
        size, interval = self.batch_size, self.flush_interval
        monotonic = time.monotonic
        stopping = False
        while not stopping:
            batch = await queue.get(size)
            if batch is STOP:
                break
            if not batch:
                continue
            # A batch ends when full, at the stop marker, or once its oldest
            # event was acknowledged ``flush_interval`` ago. Counting from the
            # acknowledgement (not from when this writer took the batch) makes
            # this a group commit: events that queued up while the previous
            # write and fsync ran are already old enough and go out at once,
            # so a slow fsync is paid per batch, not per flush interval.
            deadline = batch[0][1] + interval
            while len(batch) < size:
                try:
                    more = queue.get_nowait(size - len(batch))
                except asyncio.QueueEmpty:
                    remaining = deadline - monotonic()
                    if remaining <= 0:
                        break
                    try:
                        async with asyncio.timeout(remaining):
                            more = await queue.get(size - len(batch))
                    except TimeoutError:
                        break
                if more is STOP:
                    stopping = True
                    break
                batch = [*batch, *more]
            await self.deliver(batch)
        await self.sink.flush()

    async def deliver(self, batch: list[Encoded]) -> None:
        """Write one batch until the sink takes it (retrying whole), then account for it.

        With tracing on, in a span linked to the producers of its events.
        """
        if self._tracing is not None:
            await self._tracing.linked(
                "pipeline sink write",
                (acked for _, acked in batch),
                {"pipeline.sink": self.sink.backend, "pipeline.batch.events": len(batch)},
                lambda: self._deliver(batch),
            )
        else:
            await self._deliver(batch)

    async def _deliver(self, batch: list[Encoded]) -> None:
        lines = [line for line, _ in batch]
        delay = _RETRY_FIRST
        while True:
            started = time.perf_counter()
            try:
                await self.sink.write_batch(lines)
                break
            except Exception as exc:
                self._m_failures.inc()
                if self._tracing is not None:
                    self._tracing.event_here(
                        "sink write failed", error=f"{type(exc).__name__}: {exc}", retry_in=delay
                    )
                log.error(  # noqa: TRY400 - one line, no traceback
                    "sink write failed: retrying the batch",
                    backend=self.sink.backend,
                    events=len(lines),
                    retry_in=delay,
                    error=f"{type(exc).__name__}: {exc}",
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
        now = time.monotonic()
        self._m_write.observe(time.perf_counter() - started)
        self._m_batch.observe(len(lines))
        # Events acknowledged together (one HTTP request) share one observation.
        observe = self._m_latency.observe_many
        run_acked, run = batch[0][1], 0
        for _, acked in batch:
            if acked != run_acked:
                observe(now - run_acked, run)
                run_acked, run = acked, 0
            run += 1
        observe(now - run_acked, run)
        self.delivered += len(lines)
        self._m_delivered.value += len(lines)
        if len(self.hub):
            try:
                self.hub.publish([data for _, data in lines])
            except Exception:
                log.exception("publishing to stream subscribers failed")
