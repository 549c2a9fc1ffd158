"""Slow bodies are cut (408, then closed) and connections past the cap get a fast 503."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import pytest

from tests.support.process import running_service, scrape
from tests.support.slowclients import (
    Served,
    beside_normal_traffic,
    read_until_closed,
    serving,
    trickle,
)
from tests.support.tracing import memory_exporter

BODY_TIMEOUT = 0.5


@pytest.fixture(params=[False, True], ids=["untraced", "traced"])
def tracing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """Both request paths: the traced middleware tracks the connection as the untraced one does."""
    if not request.param:
        yield False
        return
    with memory_exporter(monkeypatch):
        yield True


def _serving(tracing: bool = False, **http: Any) -> AbstractAsyncContextManager[Served]:
    return serving(tracing=tracing, **{"body_timeout": BODY_TIMEOUT, **http})


async def _answer_then_closed(reader: asyncio.StreamReader, limit: float) -> tuple[bytes, bytes]:
    """The response head and body, once the server has closed the connection."""
    head, _, body = (await read_until_closed(reader, limit)).partition(b"\r\n\r\n")
    return head, body


@pytest.mark.asyncio
async def test_a_trickled_body_is_answered_408_problem_json_then_closed(tracing: bool) -> None:
    async with _serving(tracing) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        started = time.monotonic()
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n"
            b"X-Request-ID: slow-body\r\n\r\nxx"
        )
        trickler = asyncio.create_task(trickle(writer, 0.05))
        head, body = await _answer_then_closed(reader, 5)
        took = time.monotonic() - started
        trickler.cancel()
        writer.close()
    assert head.split(b" ", 2)[1] == b"408", head
    assert b"application/problem+json" in head
    assert b"connection: close" in head.lower()
    doc = json.loads(body)
    assert (doc["status"], doc["type"], doc["request_id"]) == (
        408,
        "urn:problem:request-timeout",
        "slow-body",
    )
    assert BODY_TIMEOUT * 0.9 <= took < BODY_TIMEOUT + 1.0
    assert served.body_timeouts.value == 1


@pytest.mark.asyncio
async def test_a_slow_body_within_the_deadline_is_read_whole(tracing: bool) -> None:
    async with _serving(tracing, body_timeout=1.0) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
        for _ in range(5):  # 0.6 s in all: three header... and more than one sweep apart
            await asyncio.sleep(0.12)
            writer.write(b"b")
        head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
    assert head.split(b" ", 2)[1] == b"200"
    assert served.body_timeouts.value == 0


@pytest.mark.asyncio
async def test_connections_past_the_cap_get_a_fast_503_and_are_closed() -> None:
    async with _serving(max_connections=3) as served:
        held = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(3)]
        for reader, writer in held:  # three keep-alive connections, each served
            writer.write(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).split(b" ", 2)[1] == b"200"
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            async with session.get(f"http://127.0.0.1:{served.port}/v1/info") as resp:
                doc = await resp.json(content_type=None)
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "1"
                assert resp.headers["Content-Type"] == "application/problem+json"
            assert time.monotonic() - started < 0.5
            assert doc["status"] == 503
            assert served.rejected.value == 1
            # One connection goes: there is room for the next one again.
            held[0][1].close()
            await held[0][1].wait_closed()
            await asyncio.sleep(0.05)
            async with session.get(f"http://127.0.0.1:{served.port}/v1/info") as resp:
                assert resp.status == 200
        for _, writer in held[1:]:
            writer.close()
    assert served.rejected.value == 1


# -- the service process: 300 trickling bodies --------------------------------

TRICKLERS = 300


async def _slow_bodies(port: int, timeout: float) -> tuple[list[tuple[float, bytes]], list[float]]:
    """300 connections that send a head and 2 of 100 body bytes, then trickle; normal traffic."""

    async def trickler() -> tuple[float, bytes]:
        start = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n[{"
        )
        task = asyncio.create_task(trickle(writer, 0.25))
        try:
            head, _ = await _answer_then_closed(reader, timeout + 10)
            return time.monotonic() - start, head.split(b" ", 2)[1] if head else b""
        finally:
            task.cancel()
            writer.close()

    return await beside_normal_traffic(port, TRICKLERS, trickler)


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_300_trickling_bodies_are_closed_within_the_body_timeout_while_serving(
    loop: str,
) -> None:
    timeout = 2.0
    with running_service(
        env={
            "SERVICE_HTTP__BODY_TIMEOUT": str(timeout),
            "SERVICE_LOOP__KIND": loop,
            "SERVICE_LOG__ACCESS_LOG": "false",
        }
    ) as svc:
        closed, latencies = asyncio.run(_slow_bodies(svc.ports["http"], timeout))
        metrics = scrape(svc.url("/metrics", "admin"))
        assert svc.stop() == 0
    seconds = sorted(t for t, _ in closed)
    print(
        f"{TRICKLERS} trickling bodies closed after {seconds[0]:.2f}-{seconds[-1]:.2f} s "
        f"(median {seconds[len(seconds) // 2]:.2f}); /v1/info meanwhile: max "
        f"{max(latencies) * 1000:.0f} ms over {len(latencies)} requests"
    )
    assert len(closed) == TRICKLERS
    assert {status for _, status in closed} == {b"408"}
    assert seconds[-1] < timeout + 2, seconds[-5:]
    assert seconds[0] >= timeout * 0.9
    assert len(latencies) >= 5
    assert max(latencies) < 1.0, max(latencies)
    assert metrics["service_http_body_timeouts_total"] == TRICKLERS
    assert metrics[
        'service_http_requests_total{method="POST",route="/v1/events",status="408"}'
    ] == (TRICKLERS)
