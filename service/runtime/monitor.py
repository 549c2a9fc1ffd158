"""Watching the event loop: task outcomes, loop lag, unhandled exceptions, stalls, task dump.

* A task factory adds one done callback per task that counts how named tasks
  end (``asyncio_tasks_finished_total{group,outcome}``); it works on uvloop and
  the stdlib loop alike. The live gauge by state is read at scrape time
  (``service.runtime.metrics.tasks``).
* A monitor task sleeps ``metrics.loop_lag_interval`` and records how late it
  woke up (``event_loop_lag_seconds``): a blocked loop shows up here first.
* The loop's exception handler logs each exception that no code handled (a
  failed task nobody awaited, a callback that raised) as one line with the
  task's name, and counts it (``asyncio_unhandled_exceptions_total``).
* The watchdog thread (``service.runtime.watchdog``) reports a stalled loop
  while it is stalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from service.runtime.log import get_logger
from service.runtime.metrics import CounterChild, Metrics, TaskGroups, ended_normally
from service.runtime.watchdog import Watchdog

log = get_logger("service.monitor")

_AIOHTTP_REQUEST_TASK = "RequestHandler._handle_request"


class TaskOutcomes:
    """The task factory that counts how named tasks end, by group."""

    def __init__(self, metrics: Metrics) -> None:
        self._family = metrics.tasks_finished
        self._groups = metrics.task_groups
        self._children: dict[tuple[str, str], CounterChild] = {}
        self._previous: Any = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._previous = loop.get_task_factory()
        loop.set_task_factory(self._factory)  # type: ignore[arg-type]

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.set_task_factory(self._previous)

    def _factory(
        self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Task[Any]:
        if self._previous is not None:
            task: asyncio.Task[Any] = self._previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        # aiohttp's one-task-per-request is not a named task, and a done
        # callback per request costs a few microseconds; on 3.12+ aiohttp
        # creates it without the factory anyway.
        if getattr(coro, "__qualname__", None) != _AIOHTTP_REQUEST_TASK:
            task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        # The name is read at the end: on 3.11 the loop names a task after the
        # factory has returned it.
        if task.cancelled():
            outcome = "finished" if ended_normally(task) else "cancelled"
        # Not task.exception(): that marks the error as retrieved and would
        # silence asyncio's "Task exception was never retrieved" report.
        elif getattr(task, "_exception", None) is not None:
            outcome = "failed"
        else:
            outcome = "finished"
        key = (self._groups.of(task), outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._family.labels(*key)
        child.value += 1


async def _watch_lag(metrics: Metrics, interval: float) -> None:
    lag = metrics.loop_lag.labels()
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        lag.observe(max(0.0, loop.time() - due))


class ExceptionReporter:
    """The loop's exception handler: one line per exception no code handled, counted."""

    def __init__(self, metrics: Metrics) -> None:
        self._count = metrics.unhandled_exceptions.labels()
        self._groups = metrics.task_groups

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self._count.value += 1
        fields: dict[str, Any] = {}
        future = context.get("task") or context.get("future")
        if isinstance(future, asyncio.Task):
            fields["task"] = future.get_name()
            fields["group"] = self._groups.of(future)
        for key in ("future", "handle", "protocol", "transport"):
            value = context.get(key)
            if value is not None and value is not future:
                fields[key] = repr(value)[:300]
        exc = context.get("exception")
        log.error(
            context.get("message") or "unhandled exception in the event loop",
            exc_info=exc if isinstance(exc, BaseException) else False,
            **fields,
        )


@contextlib.asynccontextmanager
async def monitoring(
    metrics: Metrics, lag_interval: float, stall_seconds: float = 0.0
) -> AsyncIterator[None]:
    """Task outcomes, the lag monitor, the exception handler and the watchdog, for the block."""
    loop = asyncio.get_running_loop()
    metrics.tasks.loop = loop
    outcomes = TaskOutcomes(metrics)
    outcomes.install(loop)
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(ExceptionReporter(metrics))
    watchdog = Watchdog(stall_seconds, metrics) if stall_seconds > 0 else None
    if watchdog is not None:
        watchdog.start()
    prefix = metrics.register_task_group("monitor")
    watcher = asyncio.create_task(_watch_lag(metrics, lag_interval), name=f"{prefix}loop-lag")
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if watchdog is not None:
            watchdog.stop()
        loop.set_exception_handler(previous_handler)
        outcomes.uninstall(loop)
        metrics.tasks.loop = None


def task_dump(
    groups: TaskGroups, loop: asyncio.AbstractEventLoop | None = None
) -> list[dict[str, Any]]:
    """Name, group, state, coroutine and top frame of every live task (for /debug/tasks)."""
    loop = loop or asyncio.get_running_loop()
    current = asyncio.current_task(loop)
    rows = []
    for task in asyncio.all_tasks(loop):
        coro = task.get_coro()
        frames = task.get_stack(limit=1)
        top = None
        if frames:
            f = frames[0]
            top = f"{f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_name}"
        rows.append(
            {
                "name": task.get_name(),
                "group": groups.of(task),
                "state": "running"
                if task is current
                else "cancelling"
                if task.cancelling()
                else "pending",
                "coroutine": getattr(coro, "__qualname__", repr(coro)),
                "top_frame": top,
            }
        )
    rows.sort(key=lambda r: (r["group"], r["name"]))
    return rows


def configure_debug(loop: asyncio.AbstractEventLoop, debug: bool, slow_callback_ms: float) -> None:
    """asyncio debug mode: slow callbacks logged, un-awaited coroutines traced."""
    loop.set_debug(debug)
    loop.slow_callback_duration = slow_callback_ms / 1000.0
    if debug:
        sys.set_coroutine_origin_tracking_depth(10)
