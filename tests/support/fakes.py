"""Fakes for in-process tests: a sink that can stall or fail, a clock, an intake, a pipeline.

Fakes over mocks: each behaves like the real thing as far as its users can see.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Sequence
from typing import Any

from service.domain.enrich import EnrichStage, UserLookup, encode_record
from service.domain.events import Event
from service.runtime.metrics import Metrics
from service.runtime.pipeline import Pipeline
from service.runtime.pipeline.sinks import Sink, SinkLine
from service.runtime.settings import PipelineSettings


class MemorySink:
    """A fake sink: keeps lines in memory; can be stalled, or made to fail N times."""

    backend = "memory"

    def __init__(self, fail_times: int = 0, *, stalled: bool = False) -> None:
        self.lines: list[SinkLine] = []
        self.batches: list[int] = []
        self.running = asyncio.Event()  # cleared: writes wait (a stalled sink)
        if not stalled:
            self.running.set()
        self.fail_times = fail_times
        self.flushes = 0
        self.closed = False

    @property
    def healthy(self) -> bool:
        return self.fail_times == 0

    async def open(self) -> None:
        pass

    async def write_batch(self, lines: Sequence[SinkLine]) -> None:
        await self.running.wait()
        if self.fail_times:
            self.fail_times -= 1
            raise OSError(28, "No space left on device")
        self.lines.extend(lines)
        self.batches.append(len(lines))

    async def flush(self) -> None:
        self.flushes += 1

    async def close(self) -> None:
        self.closed = True

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(data) for _, data in self.lines]

    def ids(self) -> list[str]:
        return [event_id for event_id, _ in self.lines]


class FakeClock:
    """A monotonic clock that moves only when a test sets ``now``."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class LocalIntake:
    """Accepts every event at once and keeps none: ids only, never full."""

    def __init__(self) -> None:
        self._prefix = os.urandom(4).hex()
        self._counter = itertools.count(1)
        self.events: list[Event] = []

    def offer_nowait(self, event: Event) -> str:
        self.events.append(event)
        return f"{self._prefix}-{next(self._counter):x}"

    async def offer(self, event: Event, timeout: float) -> str:
        return self.offer_nowait(event)


def demo_pipeline(
    settings: PipelineSettings, metrics: Metrics, users: UserLookup, sink: Sink
) -> Pipeline:
    """The demo's pipeline (the enrich stage, the demo's sink lines) around ``sink``."""
    return Pipeline(settings, metrics, [EnrichStage(users, metrics)], sink, encode_record)
