"""The executors: a thread pool for blocking I/O and a CPU executor with a bounded backlog.

Blocking calls and CPU-heavy work never run on the event loop; they run here:

* ``run_io(fn, *args)`` on a thread pool (``offload.io_workers``) for blocking
  I/O such as the sink's file writes. It is not bounded here: its callers
  (the pipeline) bound their own work.
* ``run_cpu(fn, *args)`` on the CPU executor: threads (``offload.cpu_kind =
  "thread"``) for C code that releases the GIL, such as ``hashlib.scrypt``;
  processes (``"process"``) for pure-Python CPU work, which threads would
  serialise on the GIL. At most ``cpu_workers`` jobs run and at most
  ``max_queued`` wait; past that :class:`~service.errors.ExecutorBusy` is
  raised at once, because a request that waits in an unbounded queue costs
  memory and answers too late to matter.

Context variables (the request id, structlog's bound values) travel with
each job, so its log lines carry the request id. A job's slot is held until
the job really ends: when the awaiting request is cancelled, a queued job is
cancelled and a running one finishes with its result discarded.

Metrics are loop-owned (``service.metrics``): durations are observed when a
job's completion reaches the loop, queued/running gauges are read at scrape
time from the futures' states. Nothing here touches a metric from a worker.

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
import contextvars
import functools
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar, TypeVarTuple, Unpack, cast

import structlog

from service.config import LogSettings, OffloadSettings
from service.errors import ExecutorBusy
from service.log import get_logger, request_id_var
from service.metrics import Metrics

log = get_logger("service.offload")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Added to the nice value of CPU workers (see _lower_thread_priority).
CPU_WORKER_NICE = 10

# What a job sends back: its run time, whether it returned, and the value or error.
_Outcome = tuple[float, bool, Any]

# Jobs abandoned by every Offload of this process: process state, because the
# threads still running them are. The CLI reads it to decide how to exit.
_abandoned_total = 0


def abandoned_jobs() -> int:
    """How many executor jobs were still running when their executor was closed."""
    return _abandoned_total


def _run_in_thread(ctx: contextvars.Context, fn: Callable[..., Any], args: tuple[Any, ...]
                   ) -> _Outcome:
    """The job wrapper in a worker thread: the caller's context, a timer, no raise."""
    start = time.perf_counter()
    try:
        value = ctx.run(fn, *args)
    except Exception as exc:
        return time.perf_counter() - start, False, exc
    return time.perf_counter() - start, True, value


def _run_in_process(request_id: str | None, bound: dict[str, Any], fn: Callable[..., Any],
                    args: tuple[Any, ...]) -> _Outcome:
    """The job wrapper in a worker process: a Context cannot be pickled, so the
    request id and structlog's bound values are sent along and set here."""
    ctx = contextvars.copy_context()

    def call() -> Any:
        request_id_var.set(request_id)
        structlog.contextvars.bind_contextvars(**bound)
        return fn(*args)

    return _run_in_thread(ctx, call, ())


def _lower_thread_priority() -> None:
    """Give a CPU worker thread a lower scheduling priority than the loop thread.

    On a saturated machine the loop competes with its own CPU workers for a
    core; at nice +10 a worker weighs about a tenth of the loop thread (CFS
    weights), so the loop wakes on time and the workers take what is left.
    Linux keeps the nice value per thread (setpriority(2) with a thread id);
    elsewhere that call would lower the whole process, loop included, so it
    is not made.
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CPU_WORKER_NICE)


def _init_worker_process(log_settings: LogSettings | None) -> None:
    # Ctrl-C reaches the whole process group; the parent decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # no os.nice on Windows
        os.nice(CPU_WORKER_NICE)  # the whole worker process, as for the threads above
    if log_settings is not None:
        from service import log as service_log

        service_log.configure(log_settings)


class _Pool:
    """One executor and the jobs submitted to it that have not reached the loop as done."""

    def __init__(self, name: str, executor: Executor, workers: int, max_queued: int | None,
                 metrics: Metrics) -> None:
        self.name = name
        self.executor = executor
        self.processes = isinstance(executor, ProcessPoolExecutor)
        self.workers = workers
        # Jobs that may be submitted at once: every worker busy and max_queued waiting.
        self.capacity = None if max_queued is None else workers + max_queued
        self.jobs: set[Future[_Outcome]] = set()
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

    ``io`` and ``cpu`` are the raw executors, for a library that wants an
    ``Executor``; prefer ``run_io`` and ``run_cpu``, which carry the context,
    keep the metrics and count what shutdown abandons.
    """

    def __init__(self, settings: OffloadSettings, metrics: Metrics, *,
                 log_settings: LogSettings | None = None) -> None:
        self.settings = settings
        self.io = ThreadPoolExecutor(settings.io_workers, thread_name_prefix="offload-io")
        self.cpu: Executor
        if settings.cpu_kind == "process":
            # spawn, not fork: forking a process that runs threads can copy a
            # lock held by another thread (and 3.12+ warns about it).
            self.cpu = ProcessPoolExecutor(
                settings.cpu_workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker_process, initargs=(log_settings,))
        else:
            self.cpu = ThreadPoolExecutor(settings.cpu_workers, thread_name_prefix="offload-cpu",
                                          initializer=_lower_thread_priority)
        self._io = _Pool("io", self.io, settings.io_workers, None, metrics)
        self._cpu = _Pool("cpu", self.cpu, settings.cpu_workers, settings.max_queued, metrics)
        self._pools = (self._io, self._cpu)
        self._idle = asyncio.Event()
        self._idle.set()
        self.closed = False
        self.abandoned = 0

    async def run_io(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """Run blocking I/O in the I/O thread pool."""
        return await self._run(self._io, fn, args)

    async def run_cpu(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """Run CPU-heavy work in the CPU executor, or raise ``ExecutorBusy`` at once if full."""
        return await self._run(self._cpu, fn, args)

    async def _run(self, pool: _Pool, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self.closed:
            raise RuntimeError("the executors are closed")
        if pool.full():
            pool.rejected.inc()
            raise ExecutorBusy(pool.name, retry_after=pool.retry_after())
        loop = asyncio.get_running_loop()
        job: Future[_Outcome]
        if pool.processes:
            job = pool.executor.submit(_run_in_process, request_id_var.get(),
                                       structlog.contextvars.get_contextvars(), fn, args)
        else:
            job = pool.executor.submit(_run_in_thread, contextvars.copy_context(), fn, args)
        pool.jobs.add(job)
        self._idle.clear()
        job.add_done_callback(functools.partial(self._done_in_any_thread, loop, pool))
        # If this await is cancelled, wrap_future cancels the job when it has
        # not started; a running job finishes and _job_done frees its slot.
        _, ok, value = await asyncio.wrap_future(job, loop=loop)
        if ok:
            return cast(T, value)
        raise value

    def _done_in_any_thread(self, loop: asyncio.AbstractEventLoop, pool: _Pool,
                            job: Future[_Outcome]) -> None:
        # Runs in the worker thread (or the loop's, for a cancelled job).
        # A closed loop raises RuntimeError: the job was abandoned and is counted already.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._job_done, pool, job)

    def _job_done(self, pool: _Pool, job: Future[_Outcome]) -> None:
        """On the loop: free the slot and observe the run time."""
        pool.jobs.discard(job)
        if not job.cancelled() and job.exception() is None:
            seconds = job.result()[0]
            pool.duration.observe(seconds)
            # A moving mean (weight 1/10) for the Retry-After estimate.
            pool.mean_seconds += (seconds - pool.mean_seconds) * 0.1
        if not any(p.jobs for p in self._pools):
            self._idle.set()

    async def close(self, timeout: float) -> None:
        """Cancel queued jobs, wait up to ``timeout`` for running ones, abandon the rest."""
        self.closed = True
        for pool in self._pools:
            pool.worker_processes = _worker_processes(pool.executor)
            pool.executor.shutdown(wait=False, cancel_futures=True)
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


def _worker_processes(executor: Executor) -> list[multiprocessing.process.BaseProcess]:
    """The worker processes of a process pool (none for a thread pool).

    Read before ``shutdown``, which forgets them. 3.14 has ``terminate_workers()``;
    3.11-3.13 have only the private ``_processes`` (pid -> Process).
    """
    processes = getattr(executor, "_processes", None) if isinstance(
        executor, ProcessPoolExecutor) else None
    return list(processes.values()) if processes else []
