"""The downstream stub: deterministic data, misbehaviour on request, counting cancellations."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from service.tools import stub
from tests.support.process import ServiceProcess, http_get


def test_dataset_is_deterministic() -> None:
    assert stub.user_number("u1") == 1
    assert stub.user_number("u1000") == 1000
    for missing in ("u0", "u1001", "u01", "x1", "u", "u-1", ""):
        assert stub.user_number(missing) is None
    assert stub.user_record(17) == stub.user_record(17)
    assert stub.order_records(17) == stub.order_records(17)
    counts = {len(stub.order_records(n)) for n in range(1, 1001)}
    assert counts == set(range(8))  # every size from none to seven occurs


@pytest.mark.asyncio
async def test_users_and_orders_routes() -> None:
    async with (
        stub.serving(stub.create_app("users")) as users_port,
        stub.serving(stub.create_app("orders")) as orders_port,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"http://127.0.0.1:{users_port}/users/u42") as resp:
            assert resp.status == 200
            assert await resp.json() == stub.user_record(42)
        async with http.get(f"http://127.0.0.1:{users_port}/users/u4242") as resp:
            assert resp.status == 404
        async with http.get(f"http://127.0.0.1:{orders_port}/users/u42/orders") as resp:
            assert (await resp.json())["orders"] == stub.order_records(42)
        async with http.get(f"http://127.0.0.1:{orders_port}/stats") as resp:
            stats = await resp.json()
        assert stats["requests"] == 1  # /stats itself is not counted


@pytest.mark.asyncio
async def test_query_knobs_fail_as_asked() -> None:
    async with stub.serving(stub.create_app("users")) as port, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{port}/users/u1"
        async with http.get(base + "?fail=503") as resp:
            assert resp.status == 503
        async with http.get(base + "?fail=malformed") as resp:
            assert resp.status == 200
            with pytest.raises(ValueError, match=r"Expecting|Unterminated"):
                json.loads(await resp.read())
        async with http.get(base + "?fail=big") as resp:
            assert len(await resp.read()) > 1_000_000
        with pytest.raises(aiohttp.ClientError):
            async with http.get(base + "?fail=reset") as resp:
                await resp.read()
        started = time.perf_counter()
        async with http.get(base + "?latency_ms=100") as resp:
            assert resp.status == 200
        assert time.perf_counter() - started >= 0.09


@pytest.mark.asyncio
async def test_honours_the_callers_deadline() -> None:
    """With 50 ms left, a 2 s slow stub gives up at 50 ms and answers 504."""
    app = stub.create_app("users", stub.Knobs(latency_ms=2000))
    async with stub.serving(app) as port, aiohttp.ClientSession() as http:
        started = time.perf_counter()
        async with http.get(
            f"http://127.0.0.1:{port}/users/u1", headers={"X-Request-Deadline-Ms": "50"}
        ) as resp:
            assert resp.status == 504
        assert time.perf_counter() - started < 1.0
        assert app[stub.STATS].deadline_exceeded == 1


@pytest.mark.asyncio
async def test_counts_requests_the_caller_cancelled() -> None:
    app = stub.create_app("orders", stub.Knobs(latency_ms=5000))
    async with stub.serving(app) as port, aiohttp.ClientSession() as http:

        async def call() -> None:
            async with http.get(f"http://127.0.0.1:{port}/users/u1/orders") as resp:
                await resp.read()

        tasks = [asyncio.create_task(call()) for _ in range(5)]
        await asyncio.sleep(0.2)
        assert app[stub.STATS].in_flight == 5
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(100):
            if app[stub.STATS].cancelled == 5:
                break
            await asyncio.sleep(0.01)
        stats = app[stub.STATS]
        assert (stats.cancelled, stats.in_flight) == (5, 0)


@pytest.mark.asyncio
async def test_control_changes_knobs_and_resets_stats() -> None:
    app = stub.create_app("users")
    async with stub.serving(app) as port, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{port}"
        async with http.post(base + "/control", json={"error_rate": 1.0}) as resp:
            assert (await resp.json())["error_rate"] == 1.0
        async with http.get(base + "/users/u1") as resp:
            assert resp.status == 503
        async with http.post(
            base + "/control", json={"error_rate": 0, "reset_stats": True}
        ) as resp:
            assert resp.status == 200
        async with http.get(base + "/users/u1") as resp:
            assert resp.status == 200
        async with http.get(base + "/stats") as resp:
            assert (await resp.json())["requests"] == 1


def test_stub_process_logs_its_port_and_stops_on_sigterm() -> None:
    proc = ServiceProcess(["stub", "--name", "users", "--port", "0", "--latency-ms", "1"])
    proc.start()
    try:
        ports = proc.wait_listening()
        status, _, body = http_get(f"http://127.0.0.1:{ports['http']}/users/u7")
        assert status == 200
        assert json.loads(body)["id"] == "u7"
    finally:
        code = proc.stop(10)
        assert proc.proc is not None
        assert proc.proc.stdout is not None
        proc.proc.stdout.close()  # ServiceProcess leaves the pipe open (ResourceWarning)
    assert code == 0
    assert proc.events("stopped")[0]["requests"] == 1
