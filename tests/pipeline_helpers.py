"""Fakes shared by the pipeline tests: a sink that can be stalled or made to fail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from service.sinks import SinkLine


class MemorySink:
    """A fake sink: keeps lines in memory; can be stalled, or made to fail N times."""

    backend = "memory"

    def __init__(self, fail_times: int = 0) -> None:
        self.lines: list[SinkLine] = []
        self.batches: list[int] = []
        self.running = asyncio.Event()
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
