"""The bulkhead waits for a slot while the deadline allows a call, and sheds when it does not."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from service.runtime.downstream import BulkheadFull, Deadline, DownstreamTimeout
from service.runtime.downstream.client import DownstreamClient
from tests.support.stubs import running_stub, started_client


async def _timed(client: DownstreamClient, seconds: float) -> tuple[Any, float]:
    """One call with a deadline of ``seconds``: its result (or error) and when it ended."""
    started = time.perf_counter()
    try:
        result: Any = await client.get_json("/users/u1", Deadline.after(seconds))
    except (BulkheadFull, DownstreamTimeout) as exc:
        result = exc
    return result, time.perf_counter() - started


@pytest.mark.asyncio
async def test_calls_past_the_bulkhead_wait_for_a_slot_and_are_answered() -> None:
    async with running_stub("users", latency_ms=300) as stub:
        client = await started_client("users", stub.url, bulkhead=2)
        try:
            results = await asyncio.gather(*(_timed(client, 2.0) for _ in range(5)))
        finally:
            await client.close()
    assert all(isinstance(r, dict) for r, _ in results), results
    assert stub.stats.requests == 5
    assert max(t for _, t in results) < 1.5  # three waves of two


@pytest.mark.asyncio
async def test_waiting_for_a_slot_never_makes_an_answer_later_than_its_deadline() -> None:
    async with running_stub("users", latency_ms=300) as stub:
        client = await started_client("users", stub.url, bulkhead=2)
        try:
            results = await asyncio.gather(*(_timed(client, 1.0) for _ in range(12)))
        finally:
            await client.close()
    kinds = [type(r).__name__ for r, _ in results]
    assert max(t for _, t in results) <= 1.05, results
    # Waves of two at 0, 0.3 and 0.6 s fit in the second; the rest are shed
    # (503), none started to time out while holding a slot (504).
    assert kinds.count("dict") >= 6, kinds
    assert set(kinds) <= {"dict", "BulkheadFull"}, kinds
    assert stub.stats.requests == kinds.count("dict")


@pytest.mark.asyncio
async def test_a_hopelessly_slow_downstream_sheds_within_the_deadline() -> None:
    async with running_stub("users", latency_ms=10_000) as stub:
        client = await started_client("users", stub.url, bulkhead=2)
        try:
            first = await asyncio.gather(*(_timed(client, 0.5) for _ in range(6)))
            second = await asyncio.gather(*(_timed(client, 0.5) for _ in range(6)))
        finally:
            await client.close()
    # Nothing is known at first: two calls time out, four wait and are shed,
    # all by the deadline.
    assert max(t for _, t in first) <= 0.6, first
    assert sum(isinstance(r, DownstreamTimeout) for r, _ in first) == 2
    assert sum(isinstance(r, BulkheadFull) for r, _ in first) == 4
    # Now a call is known to take the whole deadline: waiting is pointless,
    # so the calls that find the bulkhead full are shed at once.
    shed = [t for r, t in second if isinstance(r, BulkheadFull)]
    assert len(shed) == 4, second
    assert max(shed) < 0.05, second
    assert max(t for _, t in second) <= 0.6, second
