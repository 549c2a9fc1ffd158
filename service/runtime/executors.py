"""The executors' moving parts: a thread pool that accounts for its jobs, process jobs, priorities.

:class:`TrackedThreadPool` hands every job submitted from the event loop to a
``track`` callback (the :class:`~service.runtime.offload.Offload` that owns
it), with the submitter's context and a run-time measurement; a process job
(:func:`run_in_process`) carries the request id, structlog's bound values and
the span context (tracing on) across, since a ``Context`` cannot be pickled.
CPU workers run at a lower scheduling priority than the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from service.runtime.requestid import request_id_var
from service.runtime.settings import LogSettings

T = TypeVar("T")

# Added to the nice value of CPU workers (see lower_thread_priority).
CPU_WORKER_NICE = 10

# What a process job sends back: its run time, whether it returned, and the value or error.
Outcome = tuple[float, bool, Any]


class Timing:
    """A job's run time, written by the worker thread and read on the loop once it is done."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds: float | None = None


def timed(
    timing: Timing,
    ctx: contextvars.Context,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """A thread job: run in the submitter's context, timed."""
    start = time.perf_counter()
    try:
        return ctx.run(fn, *args, **kwargs)
    finally:
        timing.seconds = time.perf_counter() - start


def run_in_process(
    request_id: str | None,
    bound: dict[str, Any],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    traceparent: str | None = None,
) -> Outcome:
    """A process job. A Context cannot be pickled, so the request id,
    structlog's bound values and (tracing on) the span context are sent along
    and set here; the run time comes back with the result (no raise, so it is
    known for failures too)."""
    request_id_var.set(request_id)
    structlog.contextvars.bind_contextvars(**bound)
    carried: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if traceparent is not None:
        from service.runtime.tracing.context import carried as carried_span

        carried = carried_span(traceparent)
    start = time.perf_counter()
    try:
        with carried:
            value = fn(*args)
    except Exception as exc:
        return time.perf_counter() - start, False, exc
    finally:
        structlog.contextvars.clear_contextvars()
    return time.perf_counter() - start, True, value


class TrackedThreadPool(ThreadPoolExecutor):
    """A thread pool whose jobs submitted from the event loop are accounted, however submitted.

    ``loop.run_in_executor(offload.io, ...)`` works as well as ``run_io``: the
    caller's context goes with the job and the pool's ``track`` sees it (metrics,
    shutdown). Jobs submitted from other threads run plainly, untracked.
    """

    def __init__(
        self, workers: int, name: str, initializer: Callable[[], object] | None = None
    ) -> None:
        super().__init__(workers, thread_name_prefix=f"offload-{name}", initializer=initializer)
        self.track: Callable[[asyncio.AbstractEventLoop, Future[Any], Timing], None] | None = None

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self.track is None:
            return super().submit(fn, *args, **kwargs)
        timing = Timing()
        job: Future[T] = super().submit(timed, timing, contextvars.copy_context(), fn, args, kwargs)
        self.track(loop, job, timing)
        return job


def lower_thread_priority() -> None:
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


def init_worker_process(log_settings: LogSettings | None) -> None:
    # Ctrl-C reaches the whole process group; the parent decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # no os.nice on Windows
        os.nice(CPU_WORKER_NICE)  # the whole worker process, as for the threads above
    if log_settings is not None:
        from service.runtime import log as service_log

        service_log.configure(log_settings)


def worker_processes(executor: Executor) -> list[multiprocessing.process.BaseProcess]:
    """The worker processes of a process pool (none for a thread pool).

    Read before ``shutdown``, which forgets them. 3.14 has ``terminate_workers()``;
    3.11-3.13 have only the private ``_processes`` (pid -> Process).
    """
    processes = (
        getattr(executor, "_processes", None) if isinstance(executor, ProcessPoolExecutor) else None
    )
    return list(processes.values()) if processes else []
