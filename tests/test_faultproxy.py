"""The fault-injection proxy does what its knobs say, on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from tests.support.faultproxy import FaultProxy
from tests.support.process import running_service

BODY = b"x" * 100_000
REQUEST = b"GET /big HTTP/1.1\r\nHost: upstream\r\n\r\n"


async def _big(request: web.Request) -> web.Response:
    return web.Response(body=BODY)


async def _small(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/big", _big)
    app.router.add_get("/small", _small)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def proxy(upstream: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", upstream, seed=1) as p:
        yield p


async def _raw_exchange(port: int, timeout: float = 5.0) -> tuple[bytes, BaseException | None]:
    """Send one request on a raw socket; return what came back and how it ended."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    error: BaseException | None = None
    try:
        writer.write(REQUEST)
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                got += chunk
                if len(got) >= len(BODY):
                    break
    except OSError as exc:
        error = exc
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return got, error


@pytest.mark.asyncio
async def test_faithful_by_default_on_keep_alive(proxy: FaultProxy) -> None:
    assert proxy.url.startswith("http://127.0.0.1:")
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(f"{proxy.url}/big") as resp:
                assert resp.status == 200
                assert await resp.read() == BODY
    assert proxy.stats["connections"] == 1  # one keep-alive connection, three requests


@pytest.mark.asyncio
async def test_latency_holds_each_request(proxy: FaultProxy) -> None:
    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()
        async with session.get(f"{proxy.url}/small") as resp:
            await resp.read()
        baseline = time.perf_counter() - start
        proxy.latency = 0.3
        start = time.perf_counter()
        async with session.get(f"{proxy.url}/small") as resp:
            assert await resp.text() == "ok"
        delayed = time.perf_counter() - start
    assert delayed >= 0.3
    assert delayed - baseline >= 0.25


@pytest.mark.asyncio
async def test_bandwidth_cap_paces_responses(proxy: FaultProxy) -> None:
    proxy.bandwidth = 250_000  # 100 kB at 250 kB/s: at least 0.4 s
    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()
        async with session.get(f"{proxy.url}/big") as resp:
            assert await resp.read() == BODY
        elapsed = time.perf_counter() - start
    assert elapsed >= 0.35


@pytest.mark.asyncio
async def test_reset_mid_response_sends_part_then_rst(proxy: FaultProxy) -> None:
    proxy.reset_after = 20
    got, error = await _raw_exchange(proxy.port)
    assert len(got) <= 20  # never the whole answer
    assert isinstance(error, ConnectionResetError), (got, error)
    assert proxy.stats["reset"] == 1


@pytest.mark.asyncio
async def test_reset_mid_response_breaks_an_http_client(proxy: FaultProxy) -> None:
    proxy.reset_after = 200  # past the headers, inside the body
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"{proxy.url}/big") as resp:
                await resp.read()


@pytest.mark.asyncio
async def test_close_without_answer_is_a_clean_eof(proxy: FaultProxy) -> None:
    proxy.close_without_answer = True
    got, error = await _raw_exchange(proxy.port)
    assert got == b""
    assert error is None  # a FIN, not an RST
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with session.get(f"{proxy.url}/small") as resp:
                await resp.read()
    assert proxy.stats["close"] >= 2  # aiohttp retries an idempotent request once


@pytest.mark.asyncio
async def test_random_faults_hit_about_the_asked_share(proxy: FaultProxy) -> None:
    proxy.fault_rate = 0.3
    proxy.faults = ("close",)
    failures = 0
    for _ in range(60):
        got, _error = await _raw_exchange(proxy.port)
        if got == b"":
            failures += 1
        else:
            assert got.startswith(b"HTTP/1.1 200")
    assert failures == proxy.stats["close"]
    assert 5 <= failures <= 35  # seeded: deterministic, but say what is expected
    proxy.clear()
    async with aiohttp.ClientSession() as session, session.get(f"{proxy.url}/small") as resp:
        assert resp.status == 200


@pytest.mark.asyncio
async def test_refused_upstream_resets_the_client() -> None:
    async with FaultProxy("127.0.0.1", 1) as proxy:  # port 1: nothing listens
        got, error = await _raw_exchange(proxy.port)
    assert got == b""
    assert isinstance(error, ConnectionResetError) or error is None
    assert proxy.stats["upstream_refused"] == 1


@pytest.mark.asyncio
async def test_close_ends_open_connections_and_their_tasks(proxy: FaultProxy) -> None:
    proxy.latency = 30  # a request stuck in the proxy
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(REQUEST)
    await asyncio.sleep(0.1)
    before = {t for t in asyncio.all_tasks() if t.get_name().startswith("faultproxy")}
    assert before
    async with asyncio.timeout(2):
        await proxy.close()
        assert await reader.read() == b""
    assert not any(not t.done() for t in before)
    writer.close()


@pytest.mark.asyncio
async def test_service_answers_broken_downstreams_with_502_and_504(tmp_path: Path) -> None:
    """The proxy between the service and a real stub: each fault maps to SPEC's status."""
    with (
        running_service(["stub", "--name", "users", "--port", "0"]) as users,
        running_service(["stub", "--name", "orders", "--port", "0"]) as orders,
    ):
        async with FaultProxy("127.0.0.1", users.ports["http"]) as proxy:
            env = {
                "SERVICE_DOWNSTREAM__USERS_URL": proxy.url,
                "SERVICE_DOWNSTREAM__ORDERS_URL": orders.url(),
                "SERVICE_DOWNSTREAM__DEADLINE_SECONDS": "1.0",
                "SERVICE_PIPELINE__SINK_PATH": f"{tmp_path}/events.jsonl",
            }
            with running_service(env=env) as svc:
                async with aiohttp.ClientSession() as session:

                    async def summary(user: str) -> int:
                        start = time.perf_counter()
                        async with session.get(svc.url(f"/v1/users/{user}/summary")) as resp:
                            await resp.read()
                        assert time.perf_counter() - start < 3.0  # the deadline holds
                        return resp.status

                    assert await summary("u1") == 200
                    proxy.close_without_answer = True
                    assert await summary("u2") in (502, 503)
                    proxy.clear()
                    proxy.reset_after = 5
                    assert await summary("u3") in (502, 503)
                    proxy.clear()
                    proxy.latency = 2.0  # past the 1 s deadline
                    assert await summary("u4") in (503, 504)
                    proxy.clear()
    assert proxy.stats["close"] >= 1
    assert proxy.stats["reset"] >= 1
