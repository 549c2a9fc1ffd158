"""The pipeline: intake -> stages (bounded queues, owned workers) -> sink writer.

::

    offer*() --> ingest queue --> stage 1 workers --> queue --> ... --> sink writer --> Sink
    (ack = id)   (ingest_capacity)   (process)      (capacity)          (batches,   (durable)
                                                                         fsync)  --> StreamHub

An event is *acknowledged* once it is in the ingest queue (:mod:`.intake`)
and *delivered* once the sink has made its batch durable (:mod:`.writer`).
Everything between the two is bounded: at most ``ingest_capacity`` + each
stage's ``capacity`` + its ``workers * WORKER_BATCH`` + ``batch_size``
events are held, so memory stays flat however hard clients push.

Nothing acknowledged is lost on purpose: a stage maps every value to its
next form (:mod:`.stages`), a failed sink write is retried whole, and
:meth:`Pipeline.drain` (shutdown step 4) stops intake, lets every queue
empty through the workers, fsyncs, and only then lets the workers end, each
on a stop marker queued behind the last event. What cannot be delivered
within the drain budget is counted as ``dropped``, which makes the exit code 1.

The workers run in a TaskGroup owned by one dedicated task
(``pipeline:run``, :attr:`Pipeline.task`), not by the app's cleanup context:
a TaskGroup cancels its *parent* when a child fails, and the parent of a
cleanup context is the service's main task. If a worker or the sink writer
dies of an unexpected exception, intake closes and that task ends with the
error; the wiring watches it (``ServiceState.watch``), so the service logs
one line saying why and exits with code 1 instead of running on, unready.

This module must not accept work while draining and must not know the
transports or the domain: the wiring hands it the stages and the encoder.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from service.runtime.log import get_logger
from service.runtime.metrics import Metrics
from service.runtime.pipeline.batchqueue import STOP, BatchQueue
from service.runtime.pipeline.intake import Intake, Item
from service.runtime.pipeline.sinks import Sink
from service.runtime.pipeline.stages import WORKER_BATCH, Stage, encode_json
from service.runtime.pipeline.stream import StreamHub
from service.runtime.pipeline.writer import Encoded, SinkWriter
from service.runtime.settings import PipelineSettings

if TYPE_CHECKING:
    from service.runtime.tracing.core import Tracing

log = get_logger("service.pipeline")

# An event's sink line: (event id, its value after the last stage, received at
# (wall clock)) -> one JSON object, without a line ending.
Encode = Callable[[str, Any, float], bytes]


class Pipeline:
    """The running pipeline; ``async with`` it (opens the sink, starts and stops the workers)."""

    name = "pipeline"

    def __init__(
        self,
        settings: PipelineSettings,
        metrics: Metrics,
        stages: Sequence[Stage],
        sink: Sink,
        encode: Encode = encode_json,
        *,
        tracing: Tracing | None = None,
    ) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        # With tracing on, each stage batch and sink write is a span linked to
        # the requests and TCP reads that produced its events.
        self._tracing = tracing
        self.settings = settings
        self.sink = sink
        self.stages = list(stages)
        self._encode = encode
        self._prefix = metrics.register_task_group("pipeline")
        clock = time.monotonic if tracing is None else tracing.acked_now
        self.intake = Intake(settings.ingest_capacity, metrics, clock)
        # The intake's methods, bound once: the transports call them per event.
        self.offer_nowait = self.intake.offer_nowait
        self.offer_batch_nowait = self.intake.offer_batch_nowait
        self.offer = self.intake.offer
        self.ensure_room = self.intake.ensure_room
        self.count_invalid = self.intake.count_invalid
        # The queue in front of each stage, then the one in front of the sink writer.
        self._queues: list[BatchQueue[Any]] = [self.intake.queue]
        for stage in self.stages:
            self._queues.append(BatchQueue(settings.stage(stage.name).capacity))
        for label, queue in zip(
            ("ingest", *(s.name for s in self.stages)), self._queues, strict=True
        ):
            metrics.queue_depth.set_function(queue.qsize, label)
            metrics.queue_capacity.labels(label).set(queue.capacity)
        self.hub = StreamHub(metrics, settings.subscriber_buffer)
        self.writer = SinkWriter(
            self._queues[-1],
            sink,
            self.hub,
            metrics,
            settings.batch_size,
            settings.flush_interval,
            tracing=tracing,
        )
        self._drained = False
        self._bypass = False  # set by a slow drain: skip the stages, lose nothing
        self._runner: asyncio.Task[None] | None = None
        self._wall_offset = time.time() - time.monotonic()
        self._last_stage_error = 0.0
        self._m_dropped = metrics.pipeline_events.labels("sink", "dropped")

    # -- resource ------------------------------------------------------------
    async def __aenter__(self) -> Pipeline:
        await self.sink.open()
        self.intake.closed = False
        self._runner = asyncio.create_task(self._run(), name=f"{self._prefix}run")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop at once, then close the sink; what is still queued is dropped (drain first)."""
        self.intake.closed = True
        runner = self._runner
        try:
            if runner is not None and not runner.done():
                runner.cancel()
                await asyncio.wait([runner])
        finally:
            await self.sink.close()
        if not self._drained and self.accepted > self.delivered:
            log.warning(
                "pipeline closed without a drain",
                accepted=self.accepted,
                delivered=self.delivered,
                dropped=self.accepted - self.delivered,
            )

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task owning the workers (``pipeline:run``), once started."""
        return self._runner

    @property
    def accepted(self) -> int:
        return self.intake.accepted

    @property
    def delivered(self) -> int:
        return self.writer.delivered

    @property
    def closed(self) -> bool:
        """True while intake is refused: before start, while draining, after a failure."""
        return self.intake.closed

    @property
    def full(self) -> bool:
        """True while the ingest queue has no room for one more event."""
        return self.intake.full

    @property
    def healthy(self) -> bool:
        running = self._runner is not None and not self._runner.done()
        return running and self.sink.healthy

    # -- workers ---------------------------------------------------------------
    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.writer.run(), name=f"{self._prefix}sink")
                stages = [
                    [
                        tg.create_task(self._worker(index), name=f"{self._prefix}{stage.name}-{i}")
                        for i in range(self.settings.stage(stage.name).workers)
                    ]
                    for index, stage in enumerate(self.stages)
                ]
                for index, workers in enumerate(stages):
                    # Every worker of this stage has ended on its stop marker:
                    # nothing more can reach the queue behind it, so the next
                    # step's markers go last (one per worker; the writer is one).
                    await asyncio.wait(workers)
                    behind = len(stages[index + 1]) if index + 1 < len(stages) else 1
                    for _ in range(behind):
                        self._queues[index + 1].put_nowait(STOP)
        except Exception:
            # A bug in a worker or the sink writer (per-item errors are handled
            # inside them): refuse intake from now on rather than acknowledge
            # events nobody will write, and end this task with the error. The
            # service watches it (ServiceState.watch): it logs why and exits 1.
            self.intake.close()
            raise

    async def _worker(self, index: int) -> None:
        stage = self.stages[index]
        inbox, outbox = self._queues[index], self._queues[index + 1]
        last = index == len(self.stages) - 1
        while True:
            batch: list[Item] = await inbox.get(WORKER_BATCH)
            if batch is STOP:
                return
            values = [value for _, value, _ in batch]
            if self._bypass:
                out = stage.bypass(values)
            elif self._tracing is None:
                out = await self._process(stage, values)
            else:
                out = await self._tracing.stage_batch(
                    stage.name, batch, functools.partial(self._process, stage, values)
                )
            if last:
                await outbox.put(self._encoded(batch, out))
            else:
                await outbox.put(
                    [
                        (event_id, value, acked)
                        for (event_id, _, acked), value in zip(batch, out, strict=True)
                    ]
                )
            # get() and put() do not suspend while there is work and room, so a
            # worker could otherwise keep the loop for as long as events keep
            # coming (15-20 ms seen under load, a stall for every client): let
            # the loop run once per batch.
            await asyncio.sleep(0)

    async def _process(self, stage: Stage, values: list[Any]) -> list[Any]:
        try:
            out = await stage.process(values)
        except Exception:  # CancelledError is not an Exception
            # A stage owns its failures; one that raises anyway is a bug: log it
            # (at most once a second) and let the batch go on without the stage.
            self._stage_failed(stage, len(values), "raised")
            return stage.bypass(values)
        if len(out) != len(values):
            self._stage_failed(stage, len(values), f"returned {len(out)} values")
            return stage.bypass(values)
        return out

    def _stage_failed(self, stage: Stage, events: int, what: str) -> None:
        now = time.monotonic()
        if now - self._last_stage_error >= 1.0:
            self._last_stage_error = now
            log.error(
                "pipeline stage failed: its batch goes on without it",
                stage=stage.name,
                events=events,
                failure=what,
                exc_info=True,
            )

    def _encoded(self, batch: list[Item], values: list[Any]) -> list[Encoded]:
        encode, offset = self._encode, self._wall_offset
        out: list[Encoded] = []
        append = out.append
        for (event_id, _, acked), value in zip(batch, values, strict=True):
            try:
                append(((event_id, encode(event_id, value, acked + offset)), acked))
            except Exception:
                # Not reachable with an encoder that owns its failures; if it is,
                # lose this one event (counted as dropped at the end), never the worker.
                log.exception("event could not be encoded: dropped", event_id=event_id)
        return out

    # -- shutdown ------------------------------------------------------------
    async def drain(self, timeout: float) -> None:
        """Shutdown step 4: stop intake, deliver everything acknowledged, fsync, stop workers.

        Half the budget is spent with the stages as usual; if events are
        still queued then (a slow or hanging downstream), the rest skips
        the stages (:meth:`Stage.bypass`) so that it is not lost.
        """
        if self._drained:
            return
        self.intake.close()
        loop = asyncio.get_running_loop()
        began = loop.time()
        runner = self._runner
        if runner is not None and not runner.done():
            stopper = asyncio.create_task(self._stop_workers(runner), name=f"{self._prefix}drain")
            done, _ = await asyncio.wait([stopper], timeout=timeout / 2)
            if not done:
                self._bypass = True
                for stage in self.stages:
                    stage.bypassing = True
                log.warning(
                    "pipeline drain is slow: the rest skips the stages", queued=self.queued()
                )
                done, _ = await asyncio.wait([stopper], timeout=timeout - timeout / 2)
            if not done:
                log.error(
                    "pipeline drain timed out: giving up on the rest",
                    timeout=timeout,
                    queued=self.queued(),
                )
                for task in (stopper, runner):
                    task.cancel()
                await asyncio.wait([stopper, runner])
        try:
            await self.sink.flush()
        except Exception:
            log.exception("final sink flush failed")
        self._drained = True
        dropped = self.accepted - self.delivered
        self._m_dropped.inc(dropped)
        log.info(
            "pipeline drained",
            accepted=self.accepted,
            delivered=self.delivered,
            dropped=dropped,
            seconds=round(loop.time() - began, 3),
        )

    def queued(self) -> int:
        """Events waiting in the queues."""
        return sum(queue.qsize() for queue in self._queues)

    async def _stop_workers(self, runner: asyncio.Task[None]) -> None:
        # The markers queue up behind every acknowledged event (intake is closed).
        for _ in range(self.settings.stage(self.stages[0].name).workers):
            self.intake.queue.put_nowait(STOP)
        await asyncio.wait([runner])

    def summary(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "delivered": self.delivered,
            "dropped": self.accepted - self.delivered,
        }
