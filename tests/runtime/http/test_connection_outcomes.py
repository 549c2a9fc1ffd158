"""How HTTP connection tasks are counted: a client closing its connection is a normal end.

aiohttp ends a connection's task by cancelling it when its client closes
the connection between requests, so five plain ``curl`` calls used to leave
``asyncio_tasks_finished_total{group="http",outcome="cancelled"}`` at 5.
"cancelled" must mean that work was cut: a request in flight.
aiohttp creates the connection task without the task factory from Python
3.12 on, so there it is not counted at all; "cancelled" stays 0 either way.
"""

from __future__ import annotations

import asyncio
import sys

import pytest
from aiohttp import web

from service.app import create_app
from service.runtime.lifecycle import Service
from tests.support.process import parse_metrics
from tests.support.settings import make_settings

COUNTED = sys.version_info < (3, 12)  # the connection task goes through the task factory
FINISHED = 'service_asyncio_tasks_finished_total{group="http",outcome="finished"}'
CANCELLED = 'service_asyncio_tasks_finished_total{group="http",outcome="cancelled"}'


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.Response(text="late")


async def _request(port: int, path: str, *, wait_answer: bool = True) -> None:
    """One HTTP/1.1 keep-alive request on its own connection, closed by the client (as curl)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    if wait_answer:
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(
            int(ln.split(b":")[1])
            for ln in head.split(b"\r\n")
            if ln.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
    else:
        await asyncio.sleep(0.2)  # the request is in its handler now
    writer.close()
    await writer.wait_closed()


async def _counts(port: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    raw = await reader.read()
    writer.close()
    return parse_metrics(raw.split(b"\r\n\r\n", 1)[1].decode())


@pytest.mark.asyncio
async def test_a_connection_closed_by_its_client_between_requests_counts_as_finished() -> None:
    service = Service(make_settings(shutdown={"grace_seconds": 1, "cancel_seconds": 1}), create_app)
    service.app.router.add_get("/test/slow", _slow)
    ports = await service.start()
    try:
        for _ in range(5):
            await _request(ports["http"], "/livez")
        await asyncio.sleep(0.1)
        samples = await _counts(ports["admin"])
        assert samples[CANCELLED] == 0
        assert samples[FINISHED] == (5 if COUNTED else 0)
        # A client that goes away while its request is handled cuts work: cancelled.
        await _request(ports["http"], "/test/slow", wait_answer=False)
        await asyncio.sleep(0.1)
        samples = await _counts(ports["admin"])
        assert samples[CANCELLED] == (1 if COUNTED else 0)
        assert samples[FINISHED] == (5 if COUNTED else 0)
    finally:
        await service.shutdown()
