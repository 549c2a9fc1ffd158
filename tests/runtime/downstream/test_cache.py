"""The enrichment lookup: TTL cache with a size bound, single-flight, no leaked tasks."""

from __future__ import annotations

import asyncio

import pytest

from service.domain.downstreams import UsersClient
from service.domain.enrich import UserLookup
from service.runtime.downstream import DownstreamError
from service.runtime.downstream.cache import SingleFlight, TTLCache, missing
from service.runtime.metrics import Metrics
from tests.support.fakes import FakeClock
from tests.support.settings import make_settings
from tests.support.stubs import Stub, running_stub, wait_for


def test_entries_expire_after_their_ttl() -> None:
    clock = FakeClock()
    cache: TTLCache[str, int] = TTLCache(ttl=10, maxsize=5, clock=clock)
    cache.put("a", 1)
    clock.now = 9.9
    assert cache.get("a") == 1
    clock.now = 10.0
    assert missing(cache.get("a"))
    assert len(cache) == 0


def test_size_is_bounded_least_recently_used_first() -> None:
    cache: TTLCache[int, int] = TTLCache(ttl=10, maxsize=3)
    for i in range(3):
        cache.put(i, i)
    cache.get(0)  # 0 is now the most recently used
    cache.put(3, 3)
    assert len(cache) == 3
    assert missing(cache.get(1))
    assert [cache.get(k) for k in (0, 2, 3)] == [0, 2, 3]


def test_zero_ttl_disables_caching() -> None:
    cache: TTLCache[str, int] = TTLCache(ttl=0, maxsize=3)
    cache.put("a", 1)
    assert missing(cache.get("a"))


async def _users(stub: Stub, **overrides: object) -> UsersClient:
    settings = make_settings(downstream={"users_url": stub.url, **overrides}).downstream
    client = UsersClient("users", settings.service("users"), Metrics())
    await client.start()
    return client


@pytest.mark.asyncio
async def test_thousand_concurrent_lookups_of_ten_users_make_ten_calls() -> None:
    async with running_stub("users", latency_ms=50) as stub:
        client = await _users(stub)
        lookup: UserLookup = client  # the pipeline's view of it
        try:
            results = await asyncio.gather(
                *(lookup.get_user(f"u{i % 10 + 1}") for i in range(1000))
            )
            assert [r["id"] if r else None for r in results] == [
                f"u{i % 10 + 1}" for i in range(1000)
            ]
            assert stub.stats.requests == 10
            # Cached now: another round costs nothing.
            await asyncio.gather(*(lookup.get_user(f"u{i + 1}") for i in range(10)))
            assert stub.stats.requests == 10
            stats = {k: c.value for (k,), c in client.lookups.children()}
            assert stats == {"hit": 10, "miss": 10, "coalesced": 990}
        finally:
            await client.close()


@pytest.mark.asyncio
async def test_unknown_users_are_cached_as_none_and_failures_are_not() -> None:
    async with running_stub("users") as stub:
        client = await _users(stub, retry_budget_ratio=0)
        try:
            assert await client.get_user("u5000") is None
            assert await client.get_user("u5000") is None
            assert stub.stats.requests == 1
            stub.knobs.error_rate = 1.0
            with pytest.raises(DownstreamError):
                await client.get_user("u1")
            stub.knobs.error_rate = 0
            assert (await client.get_user("u1") or {})["id"] == "u1"
        finally:
            await client.close()


@pytest.mark.asyncio
async def test_one_callers_cancellation_does_not_fail_the_others() -> None:
    async with running_stub("users", latency_ms=200) as stub:
        client = await _users(stub)
        try:
            first = asyncio.create_task(client.get_user("u3"))
            others = [asyncio.create_task(client.get_user("u3")) for _ in range(5)]
            await asyncio.sleep(0.05)
            first.cancel()
            results = await asyncio.gather(*others)
            assert all(r is not None and r["id"] == "u3" for r in results)
            assert first.cancelled()
            assert stub.stats.requests == 1
            assert stub.stats.cancelled == 0
        finally:
            await client.close()


@pytest.mark.asyncio
async def test_close_cancels_lookups_in_flight_and_leaves_no_task() -> None:
    async with running_stub("users", latency_ms=5000) as stub:
        client = await _users(stub)
        callers = [asyncio.create_task(client.get_user(f"u{i}")) for i in range(1, 4)]
        assert await wait_for(lambda: stub.stats.in_flight == 3)
        for caller in callers:
            caller.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        # The shared lookups outlive their callers (they fill the cache) ...
        assert len(client._flight) == 3
        await client.close()
        # ... until the client closes.
        assert len(client._flight) == 0
        names = [t.get_name() for t in asyncio.all_tasks()]
        assert not [n for n in names if n.startswith("downstream:")]
        assert await wait_for(lambda: stub.stats.cancelled == 3)


@pytest.mark.asyncio
async def test_single_flight_error_reaches_every_caller() -> None:
    flight: SingleFlight[str, int] = SingleFlight("test")
    gate = asyncio.Event()

    async def boom() -> int:
        await gate.wait()
        raise ValueError("downstream said no")

    callers = [asyncio.create_task(flight.do("k", boom)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    assert len(flight) == 0
