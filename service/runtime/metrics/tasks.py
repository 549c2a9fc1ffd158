"""Task groups: which component a task belongs to, for the task metrics and /debug/tasks.

A task's group is the part of its name before ``:`` (``"pipeline:sink"``),
when a component has registered that group; aiohttp's connection and request
tasks are ``http``; everything else is ``other``. A component registers its
group once (``metrics.register_task_group("pipeline")``) and names its
tasks ``"<group>:<what>"``, so the set of label values stays small and fixed
at start-up, and adding a component means editing no list.
"""

from __future__ import annotations

import asyncio
import re
import weakref
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

TASK_STATES = ("pending", "running", "cancelling")
BUILTIN_GROUPS = ("http", "other")
_GROUP_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


# Tasks for which a cancellation is the normal way to end: aiohttp ends a
# connection's task by cancelling it when the client closes the connection
# between requests, or keep-alive expires (service.runtime.http.server marks
# those). The task-outcome counter counts them "finished", so that
# "cancelled" means work was cut. Weak: nothing here outlives its task.
_NORMAL_ENDS: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


def end_normally(task: asyncio.Task[Any]) -> None:
    """Count ``task`` as finished even if it ends cancelled (its cancellation is its normal end)."""
    _NORMAL_ENDS.add(task)


def ended_normally(task: asyncio.Task[Any]) -> bool:
    return task in _NORMAL_ENDS


class TaskGroups:
    """The registered task groups of one service, and the group of any task."""

    def __init__(self) -> None:
        self._names: dict[str, None] = dict.fromkeys(BUILTIN_GROUPS)  # ordered, unique

    def register(self, name: str) -> str:
        """Add a group (idempotent); returns the name prefix for its tasks, ``"<name>:"``."""
        if not _GROUP_NAME.fullmatch(name):
            raise ValueError(f"task group {name!r}: lower case letters, digits, underscores")
        self._names[name] = None
        return f"{name}:"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def of(self, task: asyncio.Task[object]) -> str:
        """The group of ``task``: its name's prefix before ':' when that is a registered group."""
        group, sep, _ = task.get_name().partition(":")
        if sep and group in self._names:
            return group
        # Not every coroutine has a str __qualname__ (uvloop's Cython ones say None).
        qualname = getattr(task.get_coro(), "__qualname__", None)
        if isinstance(qualname, str) and qualname.startswith("RequestHandler."):
            return "http"  # aiohttp's connection and request tasks
        return "other"


class TaskStateCollector:
    """``<ns>_asyncio_tasks{group,state}``: counts every live task of the loop at scrape time.

    Reading ``asyncio.all_tasks`` at scrape time costs nothing per task
    created, and sees tasks that libraries create without a task factory
    (aiohttp builds its request tasks directly on 3.12+). The admin listener
    scrapes from its own thread (``service.runtime.admin``), so "running" is
    the task the loop was running at that moment: 0 on an idle loop, 1 while
    a task holds the loop (during a stall, the one that blocks it).
    """

    def __init__(self, name: str, groups: TaskGroups) -> None:
        self.name = name
        self.groups = groups
        self.loop: asyncio.AbstractEventLoop | None = None

    def collect(self) -> Iterable[Metric]:
        counts = {(g, s): 0 for g in self.groups.names for s in TASK_STATES}
        if self.loop is not None and not self.loop.is_closed():
            current = asyncio.current_task(self.loop) if self.loop.is_running() else None
            classify = self.groups.of
            for task in asyncio.all_tasks(self.loop):
                if task is current:
                    state = "running"
                elif task.cancelling():
                    state = "cancelling"
                else:
                    state = "pending"
                counts[(classify(task), state)] += 1
        fam = GaugeMetricFamily(
            self.name,
            "Live asyncio tasks by group and state; running: the task that held the "
            "loop when the scrape (served off the loop) read it.",
            labels=("group", "state"),
        )
        for (group, state), n in counts.items():
            fam.add_metric((group, state), n)
        yield fam
