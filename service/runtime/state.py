"""Shared runtime state and the hooks through which components join the shutdown.

The lifecycle (``service.runtime.lifecycle``) owns the order of start and stop; the
components own what happens inside each step. A component registers, in its
own ``cleanup_ctx`` and before it yields:

* a :class:`Listener` (e.g. the TCP server) that the lifecycle starts after
  the admin listener and stops in step 2, finishing in step 3;
* a :class:`Drain` (e.g. the pipeline) that runs in step 4 and reports its
  counts for the summary line (a non-zero ``dropped`` makes the exit code 1);
* a readiness check (``checks``): ``/readyz`` answers 503 while one is false;
* a core task (:meth:`ServiceState.watch`: the pipeline's workers and sink
  writer, the TCP server's sweeper): if it dies of an exception, the service
  cannot do its job and must not go on looking alive (``/livez`` 200 with
  ``/readyz`` 503 forever, never restarted). :meth:`ServiceState.fail` then
  has the lifecycle log one line saying why, shut down as usual and exit
  with code 1, so the orchestrator restarts it. A component may also call
  :meth:`ServiceState.fail` itself.

This module imports nothing from the rest of the service, so every module
may import it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class Listener(Protocol):
    """A listener other than HTTP that the lifecycle starts and stops."""

    name: str

    async def start(self) -> list[tuple[str, int]]:
        """Bind and start accepting; return the bound (host, port) addresses."""

    async def stop_accepting(self) -> None:
        """Step 2: close the listening socket and stop reading new input."""

    async def finish(self, timeout: float) -> None:
        """Step 3: answer what was read, say goodbye, close every client, within ``timeout``."""


class Drain(Protocol):
    """A component with acknowledged work that must reach durable storage on shutdown."""

    name: str

    async def drain(self, timeout: float) -> None:
        """Step 4: stop intake, finish everything acknowledged, within ``timeout``."""

    def summary(self) -> dict[str, int]:
        """Counts for the summary line; the key ``dropped`` counts acknowledged work lost."""


class SummarySource(Protocol):
    def __call__(self) -> dict[str, int]: ...


# Told when the service fails: (why, the exception if there is one).
FailureHook = Callable[[str, "BaseException | None"], None]


@dataclass
class ServiceState:
    """What the handlers need to know about the lifecycle."""

    ready: bool = False
    draining: bool = False
    started_monotonic: float = field(default_factory=time.monotonic)
    listeners: list[Listener] = field(default_factory=list)
    drains: list[Drain] = field(default_factory=list)
    summaries: list[SummarySource] = field(default_factory=list)
    checks: list[Callable[[], bool]] = field(default_factory=list)
    failure: str | None = None
    failure_hooks: list[FailureHook] = field(default_factory=list)

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic

    def is_ready(self) -> bool:
        """Serving, and every component's readiness check passes."""
        return self.ready and all(check() for check in self.checks)

    def fail(self, reason: str, exc: BaseException | None = None) -> None:
        """A core component cannot go on: the service stops and exits 1 (call on the loop)."""
        if self.failure is not None:
            return
        self.failure = reason
        for hook in self.failure_hooks:
            hook(reason, exc)

    def watch(self, task: asyncio.Task[Any], what: str) -> None:
        """``task`` is a core worker: its death by an exception fails the service."""

        def ended(task: asyncio.Task[Any]) -> None:
            if not task.cancelled() and (exc := task.exception()) is not None:
                self.fail(f"{what} failed: {describe(exc)}", exc)

        task.add_done_callback(ended)


def describe(exc: BaseException) -> str:
    """``Type: message`` of ``exc``, or of the first error inside an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
