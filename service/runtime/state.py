"""Shared runtime state and the hooks through which components join the shutdown.

The lifecycle (``service.runtime.lifecycle``) owns the order of start and stop; the
components own what happens inside each step. A component registers, in its
own ``cleanup_ctx`` and before it yields:

* a :class:`Listener` (e.g. the TCP server) that the lifecycle starts after
  the admin listener and stops in step 2, finishing in step 3;
* a :class:`Drain` (e.g. the pipeline) that runs in step 4 and reports its
  counts for the summary line (a non-zero ``dropped`` makes the exit code 1);
* a readiness check (``checks``): ``/readyz`` answers 503 while one is false.

This module imports nothing from the rest of the service, so every module
may import it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


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

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic

    def is_ready(self) -> bool:
        """Serving, and every component's readiness check passes."""
        return self.ready and all(check() for check in self.checks)
