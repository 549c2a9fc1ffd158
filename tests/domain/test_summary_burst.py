"""A burst of summaries against a slow downstream, on the default settings: waiting, not shedding.

An asyncio service exists to hold thousands of waiting calls; a burst of 200
requests whose orders call takes 800 ms must be answered, not refused.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.domain.test_routes_summary import summary_service
from tests.support.process import http_get
from tests.support.stubs import running_stubs, service_process, stub_process

# The burst runs in its own process: 200 connections opened at once, each one
# GET, the status and the time to its answer printed as JSON.
BURST = """
import asyncio, json, sys, time
import aiohttp

async def main(base, n):
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        async def one(i):
            started = time.perf_counter()
            async with http.get(f"{base}/v1/users/u{i % 100 + 1}/summary") as resp:
                await resp.read()
            return resp.status, time.perf_counter() - started
        print(json.dumps(await asyncio.gather(*(one(i) for i in range(n)))))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def burst(base: str, n: int) -> list[tuple[int, float]]:
    out = subprocess.run(
        [sys.executable, "-c", BURST, base, str(n)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [(status, seconds) for status, seconds in json.loads(out)]


@pytest.mark.slow
def test_200_concurrent_summaries_against_an_800ms_downstream_are_answered() -> None:
    with (
        stub_process("users") as users,
        stub_process("orders", "--latency-ms", "800") as orders,
        service_process(
            {
                "SERVICE_DOWNSTREAM__USERS_URL": users.url(),
                "SERVICE_DOWNSTREAM__ORDERS_URL": orders.url(),
                "SERVICE_LOG__ACCESS_LOG": "false",
            }
        ) as service,
    ):
        assert http_get(service.url("/v1/users/u1/summary"))[0] == 200
        answers = burst(service.url(), 200)
    statuses = Counter(status for status, _ in answers)
    slowest = max(seconds for _, seconds in answers)
    print(f"burst of 200: {dict(statuses)}, slowest answer {slowest:.2f} s")
    assert statuses[200] >= 198, statuses


@pytest.mark.asyncio
async def test_a_hopelessly_slow_orders_service_is_shed_within_the_request_deadline() -> None:
    """Orders at 10 s, budget 0.5 s, bulkhead 2: every summary is answered by its deadline."""
    async with (
        running_stubs(latency_ms=10_000) as (users, orders),
        summary_service(users, orders, bulkhead=2, deadline_seconds=0.5) as client,
    ):

        async def one() -> tuple[int, float]:
            started = time.perf_counter()
            resp = await client.get("/v1/users/u1/summary")
            await resp.read()
            return resp.status, time.perf_counter() - started

        for _ in range(2):  # before and after the bulkhead knows how slow a call is
            answers = await asyncio.gather(*(one() for _ in range(8)))
            assert {status for status, _ in answers} <= {503, 504}, answers
            assert sum(status == 503 for status, _ in answers) >= 6, answers
            assert max(seconds for _, seconds in answers) <= 0.6, answers
