"""Small real servers for the load-test client's tests: counting, stalling, misbehaving.

Each one counts what it received, so a test can hold the client's numbers
against the server's own.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from aiohttp import web

from service.tools.loadtest.driver import Driver
from service.tools.loadtest.plan import Plan
from service.tools.loadtest.report import Report, to_wire
from service.tools.loadtest.scenarios import build


class CountingApp:
    """An aiohttp app answering every path; ``stall()`` pauses it as a whole.

    A stall models a server pause (GC, a blocked loop): every request that
    arrives or is in progress during it is answered only when it ends.
    """

    def __init__(
        self, delay: float = 0.0, status: Callable[[int], int] | None = None, close_every: int = 0
    ) -> None:
        self.count = 0
        self.delay = delay
        self.status = status or (lambda n: 200)
        self.close_every = close_every
        self.stall_at: float | None = None  # seconds after the first request
        self.stall_for = 0.0
        self._first = 0.0
        self._stall_until = 0.0
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.count += 1
        await request.read()
        now = time.monotonic()
        if self.count == 1:
            self._first = now
        if self.stall_at is not None and now - self._first >= self.stall_at:
            self.stall_at = None
            self._stall_until = now + self.stall_for
        if now < self._stall_until:
            await asyncio.sleep(self._stall_until - now)
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = {}
        if self.close_every and self.count % self.close_every == 0:
            headers["Connection"] = "close"
        return web.Response(
            body=b'{"ok":true}',
            status=self.status(self.count),
            content_type="application/json",
            headers=headers,
        )


@asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[int]:
    """``app`` on a free loopback port of the running loop; yields the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


class RawServer(asyncio.Protocol):
    """A raw TCP server whose reaction to data is ``behaviour``: garbage, reset, silence..."""

    def __init__(self, behaviour: str, stats: dict[str, int]) -> None:
        self.behaviour = behaviour
        self.stats = stats
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.stats["lines"] += data.count(b"\n")
        if self.behaviour == "garbage":
            self.transport.write(b"SPAM 200 what\r\n\r\n")
        elif self.behaviour == "reset":
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        elif self.behaviour == "close":
            self.transport.close()
        elif self.behaviour == "pong":
            self.transport.write(b"PONG\n" * data.count(b"\n"))
        elif self.behaviour == "pong-split":
            # Each answer in two reads: the client must not take the half for an answer.
            transport = self.transport
            transport.write(b"PO" * data.count(b"\n"))
            asyncio.get_running_loop().call_later(
                0.001, lambda: transport.is_closing() or transport.write(b"NG\n")
            )
        elif self.behaviour == "events":
            out = []
            for line in data.splitlines():
                out.append(b"OK e1\n" if line.startswith(b"{") else b"ERR invalid_json bad\n")
            self.transport.write(b"".join(out))
        # "silent": read and never answer


@asynccontextmanager
async def serve_raw(behaviour: str, stats: dict[str, int] | None = None) -> AsyncIterator[int]:
    """A :class:`RawServer` on a free port; ``stats["lines"]`` counts lines received."""
    loop = asyncio.get_running_loop()
    protocols: list[RawServer] = []
    counts = stats if stats is not None else {}
    counts.setdefault("lines", 0)

    def factory() -> RawServer:
        protocols.append(RawServer(behaviour, counts))
        return protocols[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for proto in protocols:
            if proto.transport is not None:
                proto.transport.abort()
        await server.wait_closed()


def plan_for(port: int, **overrides: Any) -> Plan:
    values: dict[str, Any] = {
        "kind": "http",
        "host": "127.0.0.1",
        "port": port,
        "path": "/",
        "scenario": "url",
        "concurrency": 4,
        "duration": 1.0,
    }
    values.update(overrides)
    return Plan(**values)


async def drive(plan: Plan) -> Report:
    """Run ``plan`` in this loop (one worker), as ``service loadtest`` would."""
    measured = await Driver(plan, build(plan)).run()
    return Report.merge(plan, [to_wire(measured)])


@contextmanager
def app_in_thread(app: CountingApp) -> Iterator[int]:
    """``app`` served by its own loop in a thread (for tests that run the CLI)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []
    stop: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with serve_app(app.app) as p:
            port.append(p)
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10), "test server did not start"
    try:
        yield port[0]
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
