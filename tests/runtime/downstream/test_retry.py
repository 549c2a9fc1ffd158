"""Retries: idempotent calls only, at most 3 attempts, full-jitter backoff, a 10% budget."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import uvloop

from service.runtime.downstream import BadResponse, Deadline
from service.runtime.downstream.client import DownstreamClient
from service.runtime.downstream.retry import RetryBudget, full_jitter
from service.runtime.metrics import Metrics
from tests.support.stubs import running_stub, service_settings

CALLS = 10_000
BASE, CAP = 0.0005, 0.002


def test_budget_allows_at_most_its_ratio_of_calls() -> None:
    budget = RetryBudget(0.1, burst=10)
    assert not budget.try_spend()  # starts empty: no retry before ten calls
    spent = 0
    for _ in range(1000):
        budget.on_call()
        while budget.try_spend():
            spent += 1
    assert spent == 100


def test_budget_saves_at_most_its_burst() -> None:
    budget = RetryBudget(0.5, burst=3)
    for _ in range(100):
        budget.on_call()
    assert budget.tokens == 3


def test_full_jitter_is_capped_exponential_and_random() -> None:
    assert full_jitter(1, 0.1, 1.0, uniform=lambda lo, hi: hi) == pytest.approx(0.1)
    assert full_jitter(3, 0.1, 1.0, uniform=lambda lo, hi: hi) == pytest.approx(0.4)
    assert full_jitter(10, 0.1, 1.0, uniform=lambda lo, hi: hi) == 1.0
    assert full_jitter(3, 0.1, 1.0, uniform=lambda lo, hi: lo) == 0.0
    assert len({full_jitter(2, 0.1, 1.0) for _ in range(100)}) == 100


class CountingClient(DownstreamClient):
    """Records every attempt per calling task and every backoff delay chosen."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.attempts: Counter[asyncio.Task[object] | None] = Counter()
        self.delays: list[tuple[int, float]] = []

    async def attempt(self, *args: object, **kwargs: object) -> object:
        self.attempts[asyncio.current_task()] += 1
        return await super().attempt(*args, **kwargs)  # type: ignore[arg-type]

    def _count_retry(self, attempt: int, delay: float) -> None:
        self.delays.append((attempt, delay))
        super()._count_retry(attempt, delay)


@pytest.mark.slow
def test_half_failing_downstream_gets_bounded_retries() -> None:
    """10,000 GETs at 50% errors: <= 3 attempts each, retries <= 10% of calls, jittered.

    A statement about the policy, not the loop, so it runs once, on uvloop (the
    production loop): 11,000 requests take a few seconds each time.
    """
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_half_failing_downstream())


async def _half_failing_downstream() -> None:
    async with running_stub("users", error_rate=0.5) as users:
        settings = service_settings(
            users.url,
            retry_backoff_seconds=BASE,
            retry_backoff_max_seconds=CAP,
            breaker_failures=1_000_000,
        )  # this test is about retries, not the breaker
        client = CountingClient("users", settings, Metrics())
        await client.start()
        try:
            queue = iter(range(CALLS))
            ok = failed = 0

            async def worker() -> None:
                nonlocal ok, failed
                for n in queue:
                    try:
                        await client.get_json(f"/users/u{n % 1000 + 1}", Deadline.after(5))
                        ok += 1
                    except BadResponse:
                        failed += 1

            async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
                for i in range(50):
                    tg.create_task(worker(), name=f"test:worker-{i}")
        finally:
            await client.close()

    retries = client.stats()["retries"]
    assert ok + failed == CALLS
    # Each worker task made many calls; attempts per call are bounded through
    # the delays: a retry's attempt_number is at most 2 (the 3rd attempt is the last).
    assert max(n for n, _ in client.delays) <= 2
    assert users.stats.requests == CALLS + retries
    assert retries <= 0.10 * CALLS
    assert retries >= 0.08 * CALLS  # the budget is used, not just never spent
    delays = [d for _, d in client.delays]
    assert all(0 <= d <= CAP for d in delays)
    assert all(d <= BASE * 2 ** (n - 1) for n, d in client.delays)
    assert len(set(delays)) > 0.9 * len(delays)  # full jitter: practically all distinct


@pytest.mark.asyncio
async def test_single_call_makes_at_most_three_attempts() -> None:
    async with running_stub("users", error_rate=1.0) as users:
        settings = service_settings(
            users.url,
            retry_backoff_seconds=BASE,
            retry_backoff_max_seconds=CAP,
            breaker_failures=1000,
        )
        client = CountingClient("users", settings, Metrics())
        for _ in range(100):
            client.retry.budget.on_call()  # a full budget: only the attempt limit stops it
        await client.start()
        try:
            for _ in range(5):
                task = asyncio.create_task(client.get_json("/users/u1", Deadline.after(5)))
                with pytest.raises(BadResponse):
                    await task
                assert client.attempts[task] == 3
        finally:
            await client.close()
    assert users.stats.requests == 15


@pytest.mark.asyncio
async def test_post_is_never_retried() -> None:
    async with running_stub("users", error_rate=0.5) as users:
        settings = service_settings(users.url, breaker_failures=1_000_000)
        client = DownstreamClient("users", settings, Metrics())
        for _ in range(100):
            client.retry.budget.on_call()
        await client.start()
        try:
            failed = 0
            for _ in range(500):
                try:
                    await client.post_json("/echo", {"n": 1}, Deadline.after(5))
                except BadResponse:
                    failed += 1
        finally:
            await client.close()
    assert failed > 100
    assert users.stats.by_method["POST"] == 500
    assert client.stats()["retries"] == 0


@pytest.mark.asyncio
async def test_no_retry_sleeps_past_the_deadline() -> None:
    async with running_stub("users", error_rate=1.0) as users:
        settings = service_settings(
            users.url, retry_backoff_seconds=10.0, retry_backoff_max_seconds=10.0
        )
        client = DownstreamClient("users", settings, Metrics())
        for _ in range(100):
            client.retry.budget.on_call()
        await client.start()
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(BadResponse):
                await client.get_json("/users/u1", Deadline.after(0.5))
            assert loop.time() - started < 0.5
        finally:
            await client.close()
