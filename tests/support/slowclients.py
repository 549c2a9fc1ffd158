"""The public app behind the service's HTTP server, and clients that send slowly.

Shared by the header- and body-deadline tests: raw sockets, because aiohttp's
client cannot trickle a request byte by byte.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from service.app import create_app
from service.runtime.http.listener import HttpListener
from service.runtime.keys import HTTP_MIDDLEWARE
from service.runtime.metrics import CounterChild, GaugeChild
from tests.support.settings import make_settings

T = TypeVar("T")


@dataclass
class Served:
    """The port the app listens on and the server's counters."""

    port: int
    header_timeouts: CounterChild = field(default_factory=CounterChild)
    body_timeouts: CounterChild = field(default_factory=CounterChild)
    rejected: CounterChild = field(default_factory=CounterChild)


async def _upload(request: web.Request) -> web.Response:
    return web.json_response({"size": len(await request.read())})


@asynccontextmanager
async def serving(*, tracing: bool = False, **http: Any) -> AsyncIterator[Served]:
    """The public app (plus ``POST /upload``) behind the service's server on this loop."""
    settings = make_settings(http=http, tracing={"enabled": tracing})
    app = create_app(settings)
    app.router.add_post("/upload", _upload)
    served = Served(port=0)
    listener = HttpListener(
        app,
        settings.http,
        header_timeouts=served.header_timeouts,
        in_flight=GaugeChild(),
        middleware=app[HTTP_MIDDLEWARE],
        body_timeouts=served.body_timeouts,
        connections_rejected=served.rejected,
    )
    addresses = await listener.start()
    served.port = addresses[0][1]
    try:
        yield served
    finally:
        await listener.cleanup()


async def read_until_closed(reader: asyncio.StreamReader, limit: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``limit`` seconds)."""
    data = b""
    try:
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                data += chunk
    except ConnectionError:
        pass
    return data


async def trickle(writer: asyncio.StreamWriter, every: float) -> None:
    """One byte every ``every`` seconds until the connection closes."""
    while not writer.is_closing():
        await asyncio.sleep(every)
        writer.write(b"x")


async def beside_normal_traffic(
    port: int, n: int, slow: Callable[[], Awaitable[T]]
) -> tuple[list[T], list[float]]:
    """``n`` slow clients at once while another client keeps asking ``/v1/info``.

    Returns the slow clients' results and the normal requests' latencies.
    """
    stop = asyncio.Event()

    async def normal(session: aiohttp.ClientSession) -> list[float]:
        latencies: list[float] = []
        while not stop.is_set() or not latencies:
            start = time.monotonic()
            async with session.get(f"http://127.0.0.1:{port}/v1/info") as resp:
                assert resp.status == 200
                await resp.read()
            latencies.append(time.monotonic() - start)
            await asyncio.sleep(0.05)
        return latencies

    async with aiohttp.ClientSession() as session:
        normal_task = asyncio.create_task(normal(session))
        results = await asyncio.gather(*(slow() for _ in range(n)))
        stop.set()
        latencies = await normal_task
    return list(results), latencies
