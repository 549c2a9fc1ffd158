"""The event pipeline: bounded queues and owned workers, ingest -> enrich -> sink.

::

    offer*() --> ingest queue --> N enrich workers --> enrich queue --> sink writer --> Sink
    (ack = id)   (ingest_capacity)  (UserLookup)       (enrich_capacity)  (batches,     (durable)
                                                                          fsync)   --> StreamHub

An event is *acknowledged* (its id handed to the client) once it is in the
ingest queue, and *delivered* once the sink has made its batch durable.
Everything between the two is bounded: when the ingest queue is full,
intake refuses (HTTP 429, TCP stops reading then ``ERR overloaded``) instead
of buffering more, so memory stays flat however hard clients push. At most
``ingest_capacity + enrich_capacity + enrich_workers * WORKER_BATCH +
batch_size`` events are held (the queues, one batch in each worker's hands,
the batch being written).

Nothing acknowledged is lost on purpose: an enrichment failure writes the
event unenriched (``"enrichment": "failed"``), a failed sink write is
retried whole (the sink leaves no partial batch), and :meth:`Pipeline.drain`
(shutdown step 4) stops intake, lets every queue empty through the workers,
fsyncs and only then lets the workers end, each on a stop marker queued
behind the last event. What cannot be delivered within the drain budget is
counted as ``dropped``, which makes the exit code 1.

The workers run in a TaskGroup owned by one dedicated task
(``pipeline:run``), not by the app's cleanup context: a TaskGroup cancels
its *parent* when a child fails, and the parent of a cleanup context is
the service's main task. Workers also catch per-item errors, so one bad
event can never stop a stage.

This module must not accept work while draining and must not know the
transports: HTTP and TCP use the intake methods and map
:class:`~service.errors.IntakeFull` / :class:`~service.errors.IntakeClosed`.
"""

from __future__ import annotations

import asyncio
import os
import time
from types import TracebackType
from typing import Any

from service.batchqueue import STOP, BatchQueue
from service.config import PipelineSettings
from service.enrich import Enrichment, UserLookup, encode_record
from service.errors import IntakeClosed, IntakeFull
from service.events import Event
from service.log import get_logger
from service.metrics import Metrics
from service.sinks import Sink, SinkLine
from service.stream import StreamHub

log = get_logger("service.pipeline")

# Queue items (queues move lists of them; batchqueue.STOP is the marker a worker ends on).
_Ingested = tuple[str, Event, float]  # id, event, acknowledged at (monotonic)
_Enriched = tuple[SinkLine, float]  # the encoded line, acknowledged at

RETRY_AFTER_SECONDS = 1
# Events an enrich worker takes at a time: large enough that queue operations
# are rare and that users repeat within a batch (one lookup per user per
# batch), small enough that the workers share a burst of large HTTP batches.
WORKER_BATCH = 512
_SINK_RETRY_FIRST, _SINK_RETRY_MAX = 0.05, 2.0
_ENRICHMENTS: tuple[Enrichment, ...] = ("ok", "unknown_user", "failed", "skipped")
_NOT_LOOKED_UP: dict[str, Any] = {}  # a marker (identity), never a user


class EventIds:
    """Unique, cheap, roughly time-ordered ids: start time + random per process, then a counter.

    The random part keeps ids of a restarted process (same second, same
    sink file) from colliding with the previous run's. Single ids are made
    ahead, a batch at a time (a list's pop per TCP line instead of a format).
    """

    BATCH = 1024

    def __init__(self) -> None:
        self._prefix = f"{int(time.time()):08x}{os.urandom(4).hex()}-"
        self._next = 1
        self._ahead: list[str] = []

    def new(self) -> str:
        try:
            return self._ahead.pop()
        except IndexError:
            # Made in reverse, so that pop() hands them out in order.
            self._ahead = self.many(self.BATCH)[::-1]
            return self._ahead.pop()

    def many(self, count: int) -> list[str]:
        """``count`` new ids at once (an HTTP batch): one call, not one per event."""
        first = self._next
        self._next = first + count
        prefix = self._prefix
        return [prefix + hex(n)[2:] for n in range(first, first + count)]


class Pipeline:
    """The running pipeline; ``async with`` it (opens the sink, starts and stops the workers)."""

    name = "pipeline"

    def __init__(
        self, settings: PipelineSettings, metrics: Metrics, users: UserLookup, sink: Sink
    ) -> None:
        self.settings = settings
        self.sink = sink
        self._users = users
        self._ingest: BatchQueue[_Ingested] = BatchQueue(settings.ingest_capacity)
        self._enriched: BatchQueue[_Enriched] = BatchQueue(settings.enrich_capacity)
        self._ids = EventIds()
        self.hub = StreamHub(metrics, settings.subscriber_buffer)
        self._closed = True  # until started
        self._drained = False
        self._skip_enrichment = False
        self._runner: asyncio.Task[None] | None = None
        self._wall_offset = time.time() - time.monotonic()
        self._last_enrich_error = 0.0
        self.accepted = 0
        self.delivered = 0

        for stage, queue in (("ingest", self._ingest), ("enrich", self._enriched)):
            metrics.queue_depth.set_function(queue.qsize, stage)
            metrics.queue_capacity.labels(stage).set(queue.capacity)
        events = metrics.pipeline_events
        self._m_accepted = events.labels("ingest", "accepted")
        self._m_enriched = {e: events.labels("enrich", e) for e in _ENRICHMENTS}
        self._m_delivered = events.labels("sink", "delivered")
        self._m_dropped = events.labels("sink", "dropped")
        self._m_rejected = {r: metrics.pipeline_rejected.labels(r)
                            for r in ("full", "closed", "invalid")}
        self._m_latency = metrics.pipeline_latency.labels()
        backend = sink.backend
        self._m_batch = metrics.sink_batch.labels(backend)
        self._m_write = metrics.sink_write.labels(backend)
        self._m_failures = metrics.sink_failures.labels(backend)

    # -- resource ------------------------------------------------------------
    async def __aenter__(self) -> Pipeline:
        await self.sink.open()
        self._closed = False
        self._runner = asyncio.create_task(self._run(), name="pipeline:run")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop at once, then close the sink; what is still queued is dropped (drain first)."""
        self._closed = True
        runner = self._runner
        try:
            if runner is not None and not runner.done():
                runner.cancel()
                await asyncio.wait([runner])
        finally:
            await self.sink.close()
        if not self._drained and self.accepted > self.delivered:
            log.warning("pipeline closed without a drain", accepted=self.accepted,
                        delivered=self.delivered, dropped=self.accepted - self.delivered)

    @property
    def closed(self) -> bool:
        """True while intake is refused: before start, while draining, after a failure."""
        return self._closed

    @property
    def healthy(self) -> bool:
        running = self._runner is not None and not self._runner.done()
        return running and self.sink.healthy

    # -- intake (HTTP and TCP) ----------------------------------------------
    def offer_nowait(self, event: Event) -> str:
        """Enqueue one validated event and return its id, or raise IntakeFull / IntakeClosed."""
        if self._closed:
            self._m_rejected["closed"].inc()
            raise IntakeClosed
        ingest = self._ingest
        if ingest.full():
            self._m_rejected["full"].inc()
            raise IntakeFull(1, RETRY_AFTER_SECONDS)
        event_id = self._ids.new()
        ingest.append_nowait((event_id, event, time.monotonic()))
        self.accepted += 1
        self._m_accepted.value += 1
        return event_id

    def offer_batch_nowait(self, events: list[Event]) -> list[str]:
        """Enqueue all of ``events`` or none of them (IntakeFull / IntakeClosed)."""
        n = len(events)
        if self._closed:
            self._m_rejected["closed"].inc(n)
            raise IntakeClosed
        if n > self._ingest.room():
            self._m_rejected["full"].inc(n)
            raise IntakeFull(n, RETRY_AFTER_SECONDS)
        now = time.monotonic()
        ids = self._ids.many(n)
        self._ingest.put_nowait([(event_id, event, now)
                                 for event_id, event in zip(ids, events, strict=True)])
        self.accepted += n
        self._m_accepted.value += n
        return ids

    async def offer(self, event: Event, timeout: float) -> str:
        """Like :meth:`offer_nowait`, but wait up to ``timeout`` seconds for room (TCP)."""
        if not self._closed and self._ingest.full():
            # Wait for a worker to free a slot (waiters are woken one per batch
            # taken, in order); a drain wakes every waiter to refuse it with
            # IntakeClosed. Nothing is queued before the final offer_nowait, so
            # a cancelled or timed-out wait leaves the event not taken.
            try:
                async with asyncio.timeout(timeout):
                    while not self._closed and self._ingest.full():
                        await self._ingest.wait_for_room()
            except TimeoutError:
                self._m_rejected["full"].inc()
                raise IntakeFull(1, RETRY_AFTER_SECONDS) from None
        return self.offer_nowait(event)

    @property
    def full(self) -> bool:
        """True while the ingest queue has no room for one more event."""
        return self._ingest.full()

    def ensure_room(self) -> None:
        """Raise IntakeClosed / IntakeFull now if no event could be taken (a pre-check)."""
        if self._closed:
            self._m_rejected["closed"].inc()
            raise IntakeClosed
        if self._ingest.full():
            self._m_rejected["full"].inc()
            raise IntakeFull(1, RETRY_AFTER_SECONDS)

    def count_invalid(self, n: int = 1) -> None:
        """Count events a transport refused as malformed (they never reach a queue)."""
        self._m_rejected["invalid"].inc(n)

    # -- workers ---------------------------------------------------------------
    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                enrichers = [
                    tg.create_task(self._enrich_worker(), name=f"pipeline:enrich-{i}")
                    for i in range(self.settings.enrich_workers)
                ]
                tg.create_task(self._sink_writer(), name="pipeline:sink")
                await asyncio.wait(enrichers)
                # Every enricher has ended on its stop marker: nothing more can
                # reach the enrich queue, so the writer's marker goes last.
                self._enriched.put_nowait(STOP)
        except Exception:
            # A bug in a worker (per-item errors are handled inside them): refuse
            # intake from now on rather than acknowledge events nobody will write.
            self._closed = True
            self._ingest.wake_all()
            log.exception("pipeline stopped: a worker failed", accepted=self.accepted,
                          delivered=self.delivered)

    async def _enrich_worker(self) -> None:
        ingest, enriched = self._ingest, self._enriched
        lookup = self._users.get_user
        outcomes = self._m_enriched
        offset = self._wall_offset
        while True:
            batch = await ingest.get(WORKER_BATCH)
            if batch is STOP:
                return
            out: list[_Enriched] = []
            append = out.append
            # One lookup per user per batch: users repeat, and even a cache hit
            # costs a coroutine per call.
            found: dict[str, dict[str, Any] | None] = {}
            ok = 0  # the common outcome is counted once per batch, the others as they come
            for event_id, event, acked in batch:
                try:
                    user: dict[str, Any] | None = None
                    outcome: Enrichment
                    if self._skip_enrichment:
                        outcome = "skipped"
                    else:
                        user_id = event["user_id"]
                        user = found.get(user_id, _NOT_LOOKED_UP)
                        try:
                            if user is _NOT_LOOKED_UP:
                                user = found[user_id] = await lookup(user_id)
                            outcome = "ok" if user is not None else "unknown_user"
                        except Exception as exc:  # CancelledError is not an Exception
                            user = None
                            outcome = "failed"
                            self._enrich_failed(exc)
                    try:
                        data = encode_record(event_id, event, acked + offset, user, outcome)
                    except TypeError:  # orjson.JSONEncodeError: the user record is not JSON
                        outcome = "failed"
                        data = encode_record(event_id, event, acked + offset, None, outcome)
                    if outcome == "ok":
                        ok += 1
                    else:
                        outcomes[outcome].value += 1
                    append(((event_id, data), acked))
                except Exception:
                    # Not reachable with a validated event; if it is, lose this one
                    # event (counted as dropped at the end), never the worker.
                    log.exception("event could not be enriched nor encoded: dropped")
            outcomes["ok"].value += ok
            if out:
                await enriched.put(out)
            # get() and put() do not suspend while there is work and room, so a
            # worker could otherwise keep the loop for as long as events keep
            # coming (15-20 ms seen under bench load, a stall for every client):
            # let the loop run once per batch (at most 512 events, about 3 ms).
            await asyncio.sleep(0)

    def _enrich_failed(self, exc: Exception) -> None:
        # At most one line a second: a downstream outage must not flood the log.
        now = time.monotonic()
        if now - self._last_enrich_error >= 1.0:
            self._last_enrich_error = now
            log.warning("user lookup failed: writing events unenriched",
                        error=f"{type(exc).__name__}: {exc}")

    async def _sink_writer(self) -> None:
        queue = self._enriched
        size, interval = self.settings.batch_size, self.settings.flush_interval
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
            await self._deliver(batch)
        await self.sink.flush()

    async def _deliver(self, batch: list[_Enriched]) -> None:
        """Write one batch until the sink takes it (retrying whole), then account for it."""
        lines = [line for line, _ in batch]
        delay = _SINK_RETRY_FIRST
        while True:
            started = time.perf_counter()
            try:
                await self.sink.write_batch(lines)
                break
            except Exception as exc:
                self._m_failures.inc()
                log.error("sink write failed: retrying the batch",  # noqa: TRY400 - one line
                          backend=self.sink.backend, events=len(lines), retry_in=delay,
                          error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, _SINK_RETRY_MAX)
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

    # -- shutdown ------------------------------------------------------------
    async def drain(self, timeout: float) -> None:
        """Shutdown step 4: stop intake, deliver everything acknowledged, fsync, stop workers.

        Half the budget is spent with enrichment as usual; if events are still
        queued then (a slow or hanging downstream), the rest is written
        unenriched (``"enrichment": "skipped"``) so that it is not lost.
        """
        if self._drained:
            return
        self._closed = True
        self._ingest.wake_all()
        loop = asyncio.get_running_loop()
        began = loop.time()
        runner = self._runner
        if runner is not None and not runner.done():
            stopper = asyncio.create_task(self._stop_workers(runner), name="pipeline:drain")
            done, _ = await asyncio.wait([stopper], timeout=timeout / 2)
            if not done:
                self._skip_enrichment = True
                log.warning("pipeline drain is slow: writing the rest unenriched",
                            queued=self._ingest.qsize() + self._enriched.qsize())
                done, _ = await asyncio.wait([stopper], timeout=timeout - timeout / 2)
            if not done:
                log.error("pipeline drain timed out: giving up on the rest",
                          timeout=timeout, queued=self._ingest.qsize() + self._enriched.qsize())
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
        log.info("pipeline drained", accepted=self.accepted, delivered=self.delivered,
                 dropped=dropped, seconds=round(loop.time() - began, 3))

    async def _stop_workers(self, runner: asyncio.Task[None]) -> None:
        # The markers queue up behind every acknowledged event (intake is closed).
        for _ in range(self.settings.enrich_workers):
            self._ingest.put_nowait(STOP)
        await asyncio.wait([runner])

    def summary(self) -> dict[str, int]:
        return {"accepted": self.accepted, "delivered": self.delivered,
                "dropped": self.accepted - self.delivered}
