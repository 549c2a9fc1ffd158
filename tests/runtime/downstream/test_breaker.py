"""The circuit breaker: opens on consecutive failures, fails fast, probes once, ignores cancels."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.runtime.downstream import BadResponse, CircuitOpen, Deadline
from service.runtime.downstream.breaker import CircuitBreaker, State
from service.runtime.downstream.client import DownstreamClient
from tests.support.fakes import FakeClock
from tests.support.stubs import percentile, running_stub, started_client, wait_for


def test_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failures=3, reset_seconds=5, clock=FakeClock())
    for _ in range(10):  # a success in between resets the count
        t1, t2 = breaker.allow(), breaker.allow()
        assert t1 is not None
        assert t2 is not None
        breaker.record_failure(t1)
        breaker.record_success(t2)
    assert breaker.state is State.CLOSED
    for _ in range(3):
        ticket = breaker.allow()
        assert ticket is not None
        breaker.record_failure(ticket)
    assert breaker.state is State.OPEN
    assert breaker.allow() is None


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_seconds=5, clock=clock)
    ticket = breaker.allow()
    assert ticket is not None
    breaker.record_failure(ticket)
    clock.now = 4.9
    assert breaker.allow() is None
    assert breaker.retry_after() == pytest.approx(0.1)
    clock.now = 5.0
    probe = breaker.allow()
    assert probe is not None
    assert probe.probe
    assert [breaker.allow() for _ in range(10)] == [None] * 10
    breaker.record_neutral(probe)  # the probe's caller gave up: another may probe
    probe = breaker.allow()
    assert probe is not None
    breaker.record_failure(probe)  # a failed probe opens the circuit again
    assert breaker.state is State.OPEN
    clock.now = 10.0
    probe = breaker.allow()
    assert probe is not None
    breaker.record_success(probe)
    assert breaker.state is State.CLOSED
    assert breaker.allow() is not None


def test_cancellations_do_not_count() -> None:
    breaker = CircuitBreaker(failures=2, reset_seconds=5, clock=FakeClock())
    for _ in range(100):
        ticket = breaker.allow()
        assert ticket is not None
        breaker.record_neutral(ticket)
    assert breaker.state is State.CLOSED


async def _client(url: str, **settings: object) -> DownstreamClient:
    values = {
        "breaker_failures": 5,
        "breaker_reset_seconds": 0.3,
        "retry_budget_ratio": 0.0,
        **settings,
    }
    return await started_client("users", url, **values)


@pytest.mark.asyncio
async def test_resets_open_the_breaker_and_open_calls_fail_fast() -> None:
    """Connection resets: open within 5 failures; then < 5 ms p99, the downstream untouched."""
    async with running_stub("users", reset_rate=1.0) as users:
        client = await _client(users.url, breaker_reset_seconds=60)
        try:
            failures = 0
            while True:
                try:
                    await client.get_json("/users/u1", Deadline.after(2))
                except BadResponse:
                    failures += 1
                except CircuitOpen:
                    break
                assert failures <= 5
            assert failures == 5
            assert users.stats.resets == 5
            seen = users.stats.requests
            wall, cpu = [], []
            for _ in range(1000):
                started, started_cpu = time.perf_counter(), time.thread_time()
                with pytest.raises(CircuitOpen):
                    await client.get_json("/users/u1", Deadline.after(2))
                wall.append(time.perf_counter() - started)
                cpu.append(time.thread_time() - started_cpu)
            # A refused call never suspends, so its wall time is its CPU time plus
            # whatever preemption a loaded machine adds: bound the CPU time at p99
            # (what the code controls) and the wall time at the median.
            assert percentile(cpu, 0.99) < 0.005
            assert percentile(wall, 0.5) < 0.005
            assert users.stats.requests == seen  # not one call reached the downstream
            assert client.stats()["rejected"] == 1001
        finally:
            await client.close()


@pytest.mark.asyncio
async def test_caller_cancellations_do_not_trip_the_breaker() -> None:
    async with running_stub("users", latency_ms=5000) as users:
        client = await _client(users.url, bulkhead=100)
        try:
            tasks = [
                asyncio.create_task(client.get_json("/users/u1", Deadline.after(10)))
                for _ in range(100)
            ]
            assert await wait_for(lambda: users.stats.in_flight == 100)
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results)
            assert client.breaker.state is State.CLOSED
            assert client.stats()["cancelled"] == 100
            users.knobs.latency_ms = 0
            assert (await client.get_json("/users/u1", Deadline.after(2)))["id"] == "u1"
            # The downstream saw every cancellation, too.
            assert await wait_for(lambda: users.stats.cancelled == 100)
        finally:
            await client.close()


@pytest.mark.asyncio
async def test_half_open_sends_exactly_one_probe() -> None:
    async with running_stub("users", reset_rate=1.0) as users:
        client = await _client(users.url, breaker_failures=1, breaker_reset_seconds=0.2)
        try:
            with pytest.raises(BadResponse):
                await client.get_json("/users/u1", Deadline.after(2))
            assert client.breaker.is_open()
            users.knobs.reset_rate = 0
            users.knobs.latency_ms = 200  # the probe stays in flight while others try
            await asyncio.sleep(0.25)
            seen = users.stats.requests
            results = await asyncio.gather(
                *(client.get_json("/users/u1", Deadline.after(2)) for _ in range(20)),
                return_exceptions=True,
            )
            assert users.stats.requests == seen + 1
            assert sum(isinstance(r, dict) for r in results) == 1
            assert sum(isinstance(r, CircuitOpen) for r in results) == 19
            assert client.breaker.state is State.CLOSED  # the probe succeeded
        finally:
            await client.close()


def test_refusing_says_what_allow_would_do_without_taking_a_ticket() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_seconds=5, clock=clock)
    assert not breaker.refusing()
    ticket = breaker.allow()
    assert ticket is not None
    breaker.record_failure(ticket)
    assert breaker.refusing()
    clock.now = 5.0
    assert not breaker.refusing()  # half-open: a probe may go
    assert not breaker.refusing()  # and asking did not take it
    probe = breaker.allow()
    assert probe is not None
    assert breaker.refusing()  # the probe is out: everyone else is refused
    breaker.record_success(probe)
    assert not breaker.refusing()
