"""The executors: a thread pool for blocking I/O and a CPU executor with a bounded backlog.

Blocking calls and CPU-heavy work never run on the event loop; they run here:

* ``run_io(fn, *args)`` on a thread pool (``offload.io_workers``) for blocking
  I/O such as the sink's file writes. It is not bounded here: its callers
  (the pipeline) bound their own work.
* ``run_cpu(fn, *args)`` on the CPU executor: threads (``offload.cpu_kind =
  "thread"``) for C code that releases the GIL, such as ``hashlib.scrypt``;
  processes (``"process"``) for pure-Python CPU work, which threads would
  serialise on the GIL. At most ``cpu_workers`` jobs run and at most
  ``max_queued`` wait; past that :class:`~service.runtime.errors.ExecutorBusy` is
  raised at once, because a request that waits in an unbounded queue costs
  memory and answers too late to matter.

CPU workers run at a lower scheduling priority (nice +10), so on a
saturated machine the loop thread still wakes on time and the workers take
the CPU that is left.

Context variables (the request id, structlog's bound values, the current
span with tracing on) travel with each job, so its log lines carry the
request id (and the trace id). A job's slot is held until
the job really ends: when the awaiting request is cancelled, a queued job is
cancelled and a running one finishes with its result discarded.

Metrics are loop-owned (``service.runtime.metrics``): durations are observed when a
job's completion reaches the loop, queued/running gauges are read at scrape
time from the futures' states. Nothing here touches a metric from a worker.

The I/O pool is also the loop's default executor (:meth:`Offload.serve_as_default`,
called by the app's start-up): ``loop.run_in_executor(None, fn)`` and
``asyncio.to_thread(fn)``, the idioms users' code and libraries reach for,
land here too, counted, with the request id, and bounded at shutdown.

Shutdown is bounded: ``close(timeout)`` cancels queued jobs, waits at most
``timeout`` for running ones and abandons the rest, counting them. A thread
cannot be killed, and the interpreter joins executor threads at exit
(``concurrent.futures`` registers that with ``threading._register_atexit``),
so ``service.cli`` leaves with ``os._exit`` when :func:`abandoned_jobs` says
a job is still running; worker processes are terminated instead.

This module must not outlive the grace period, and must not run anything
on the loop that can block it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, Unpack, cast

import structlog

from service.runtime.errors import ExecutorBusy
from service.runtime.executors import (
    Outcome,
    Timing,
    TrackedThreadPool,
    init_worker_process,
    lower_thread_priority,
    run_in_process,
    worker_processes,
)
from service.runtime.log import get_logger
from service.runtime.metrics import Metrics
from service.runtime.requestid import request_id_var
from service.runtime.settings import LogSettings, OffloadSettings

if TYPE_CHECKING:
    from service.runtime.tracing.core import Tracing

log = get_logger("service.offload")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Jobs abandoned by every Offload of this process: process state, because the
# threads still running them are. The CLI reads it to decide how to exit.
_abandoned_total = 0


def abandoned_jobs() -> int:
    """How many executor jobs were still running when their executor was closed."""
    return _abandoned_total


class _Pool:
    """One executor and the jobs submitted to it that have not reached the loop as done."""

    def __init__(
        self, name: str, executor: Executor, workers: int, max_queued: int | None, metrics: Metrics
    ) -> None:
        self.name = name
        self.executor = executor
        self.processes = isinstance(executor, ProcessPoolExecutor)
        self.workers = workers
        # Jobs that may be submitted at once: every worker busy and max_queued waiting.
        self.capacity = None if max_queued is None else workers + max_queued
        self.jobs: set[Future[Any]] = set()
        self.mean_seconds = 0.0
        self.worker_processes: list[multiprocessing.process.BaseProcess] = []
        self.duration = metrics.executor_duration.labels(name)
        self.rejected = metrics.executor_rejected.labels(name)
        metrics.executor_jobs.set_function(self.running, name, "running")
        metrics.executor_jobs.set_function(self.queued, name, "queued")

    def running(self) -> int:
        return sum(1 for job in list(self.jobs) if job.running())

    def queued(self) -> int:
        return sum(1 for job in list(self.jobs) if not (job.running() or job.done()))

    def full(self) -> bool:
        return self.capacity is not None and len(self.jobs) >= self.capacity

    def retry_after(self) -> int:
        """Seconds until the backlog has likely moved on: its jobs' mean run time, per worker."""
        seconds = len(self.jobs) * self.mean_seconds / self.workers
        return max(1, min(60, math.ceil(seconds)))


class Offload:
    """The service's executors; create once per app, ``close`` on shutdown.

    ``io`` and ``cpu`` are the executors themselves, for code that wants an
    ``Executor`` (``loop.run_in_executor(offload.io, fn)``): jobs submitted to
    a thread pool from the loop carry the context and are accounted (metrics,
    shutdown) like those of ``run_io`` and ``run_cpu``. Only ``run_cpu``
    enforces the backlog bound, and only it can use a process pool.
    """

    def __init__(
        self,
        settings: OffloadSettings,
        metrics: Metrics,
        *,
        log_settings: LogSettings | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        # On: each run_io / run_cpu job is a span, current in the job.
        self._tracing = tracing
        self.io = TrackedThreadPool(settings.io_workers, "io")
        self.cpu: Executor
        if settings.cpu_kind == "process":
            # spawn, not fork: forking a process that runs threads can copy a
            # lock held by another thread (and 3.12+ warns about it).
            self.cpu = ProcessPoolExecutor(
                settings.cpu_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker_process,
                initargs=(log_settings,),
            )
        else:
            self.cpu = TrackedThreadPool(settings.cpu_workers, "cpu", lower_thread_priority)
        self._io = _Pool("io", self.io, settings.io_workers, None, metrics)
        self._cpu = _Pool("cpu", self.cpu, settings.cpu_workers, settings.max_queued, metrics)
        self._pools = (self._io, self._cpu)
        for pool in self._pools:
            if isinstance(pool.executor, TrackedThreadPool):
                pool.executor.track = functools.partial(self._track, pool)
        self._idle = asyncio.Event()
        self._idle.set()
        self.closed = False
        self.abandoned = 0
        self._default_of: asyncio.AbstractEventLoop | None = None

    def serve_as_default(self) -> None:
        """Make the I/O pool the running loop's default executor, until :meth:`close`."""
        loop = asyncio.get_running_loop()
        loop.set_default_executor(self.io)
        self._default_of = loop

    async def run_io(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """Run blocking I/O in the I/O thread pool."""
        if self._tracing is not None:
            return await self._traced(self._io, fn, args)
        return await self._run(self._io, fn, args)

    async def run_cpu(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """Run CPU-heavy work in the CPU executor, or raise ``ExecutorBusy`` at once if full."""
        if self._tracing is not None:
            return await self._traced(self._cpu, fn, args)
        return await self._run(self._cpu, fn, args)

    async def _traced(self, pool: _Pool, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """:meth:`_run` in a span (from the wait for a worker to the result), current in the job."""
        assert self._tracing is not None
        name = getattr(fn, "__qualname__", type(fn).__name__)
        with self._tracing.tracer.start_as_current_span(
            f"offload {pool.name}", attributes={"code.function": name}
        ):
            return await self._run(pool, fn, args)

    async def _run(self, pool: _Pool, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self.closed:
            raise RuntimeError("the executors are closed")
        if pool.full():
            pool.rejected.inc()
            raise ExecutorBusy(pool.name, retry_after=pool.retry_after())
        loop = asyncio.get_running_loop()
        if not pool.processes:
            # The pool's submit carries the context and tracks the job. If this
            # await is cancelled, wrap_future cancels the job when it has not
            # started; a running job finishes and _job_done frees its slot.
            return await asyncio.wrap_future(pool.executor.submit(fn, *args), loop=loop)
        job: Future[Outcome] = pool.executor.submit(
            run_in_process,
            request_id_var.get(),
            structlog.contextvars.get_contextvars(),
            fn,
            args,
            None if self._tracing is None else self._tracing.carrier(),
        )
        self._track(pool, loop, job, Timing())
        _, ok, value = await asyncio.wrap_future(job, loop=loop)
        if ok:
            return cast(T, value)
        raise value

    def _track(
        self, pool: _Pool, loop: asyncio.AbstractEventLoop, job: Future[Any], timing: Timing
    ) -> None:
        """On the loop, at submission: the job holds a slot until it is done."""
        pool.jobs.add(job)
        self._idle.clear()
        job.add_done_callback(functools.partial(self._done_in_any_thread, loop, pool, timing))

    def _done_in_any_thread(
        self, loop: asyncio.AbstractEventLoop, pool: _Pool, timing: Timing, job: Future[Any]
    ) -> None:
        # Runs in the worker thread (or the loop's, for a cancelled job).
        # A closed loop raises RuntimeError: the job was abandoned and is counted already.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._job_done, pool, timing, job)

    def _job_done(self, pool: _Pool, timing: Timing, job: Future[Any]) -> None:
        """On the loop: free the slot and observe the run time."""
        pool.jobs.discard(job)
        seconds = timing.seconds
        if pool.processes and not job.cancelled() and job.exception() is None:
            seconds = job.result()[0]
        if seconds is not None:
            pool.duration.observe(seconds)
            # A moving mean (weight 1/10) for the Retry-After estimate.
            pool.mean_seconds += (seconds - pool.mean_seconds) * 0.1
        if not any(p.jobs for p in self._pools):
            self._idle.set()

    async def close(self, timeout: float) -> None:
        """Cancel queued jobs, wait up to ``timeout`` for running ones, abandon the rest."""
        self.closed = True
        for pool in self._pools:
            pool.worker_processes = worker_processes(pool.executor)
            pool.executor.shutdown(wait=False, cancel_futures=True)
        if self._default_of is not None and not self._default_of.is_closed():
            # The loop joins its default executor's threads when it ends
            # (asyncio.run, Runner.close: without a bound before 3.12), which
            # would wait for an abandoned job: it gets a fresh, empty pool instead.
            self._default_of.set_default_executor(ThreadPoolExecutor())
            self._default_of = None
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            pass
        finally:
            # Also when the wait itself is cancelled: the count must be right.
            self._abandon(timeout)

    def _abandon(self, timeout: float) -> None:
        global _abandoned_total
        stuck = {pool.name: len(pool.jobs) for pool in self._pools if pool.jobs}
        if not stuck:
            return
        count = sum(stuck.values())
        self.abandoned += count
        _abandoned_total += count
        log.warning("executor jobs abandoned at shutdown", timeout=timeout, **stuck)
        for pool in self._pools:
            if pool.jobs:
                for process in pool.worker_processes:
                    process.terminate()  # a process, unlike a thread, can be stopped

    def summary(self) -> dict[str, int]:
        """For the shutdown summary line."""
        return {"executor_jobs_abandoned": self.abandoned}
