"""A fault-injection TCP proxy for tests: real broken connections, not mocks.

Put it between a client and a server (the service and a downstream stub) and
turn faults on and off while traffic flows::

    async with FaultProxy("127.0.0.1", stub_port) as proxy:
        settings = make_settings(downstream={"users_url": proxy.url})
        proxy.latency = 0.2             # every request is held 200 ms
        proxy.bandwidth = 10_000        # responses trickle at 10 kB/s
        proxy.reset_after = 10          # RST after 10 bytes of the next response
        proxy.close_without_answer = True   # FIN right after the next request
        proxy.fault_rate = 0.01         # or: a random fault on 1% of requests

Faults are decided per chunk the client sends (in practice, per HTTP request,
so they work on keep-alive connections too). It listens on loopback only and
owns its tasks: ``close()`` aborts every connection and awaits every handler.
``python -m tests.support.faultproxy --upstream HOST:PORT --fault-rate 0.01`` runs it
as its own process (``scripts/soak.py`` does) and prints its port as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import socket
import struct
import sys
from collections import Counter
from typing import Literal

Fault = Literal["reset", "close", "latency"]
FAULTS: tuple[Fault, ...] = ("reset", "close", "latency")
CHUNK = 64 * 1024


class FaultProxy:
    """Forward TCP from ``127.0.0.1:<port>`` to ``upstream``, injecting faults on demand."""

    def __init__(
        self, upstream_host: str, upstream_port: int, *, port: int = 0, seed: int | None = None
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listen_port = port
        # Live knobs: tests change them while connections are open.
        self.latency = 0.0  # seconds each client chunk is held
        self.bandwidth: int | None = None  # bytes per second, upstream -> client
        self.reset_after: int | None = None  # RST after this many response bytes
        self.close_without_answer = False  # close right after the next request
        self.fault_rate = 0.0  # random fault per request, of `faults`
        self.faults: tuple[Fault, ...] = FAULTS
        self.random_latency = 1.0  # the delay of a random "latency" fault
        self.stats: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._connections: set[_Connection] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def clear(self) -> None:
        """Back to a faithful proxy."""
        self.latency = 0.0
        self.bandwidth = None
        self.reset_after = None
        self.close_without_answer = False
        self.fault_rate = 0.0

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._listen_port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # End connections by aborting them, so their handlers return normally
        # (asyncio.start_server logs a handler that ends cancelled on 3.11).
        for conn in list(self._connections):
            conn.stop()
        if self._handlers:
            _, pending = await asyncio.wait(self._handlers, timeout=2.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.stats["connections"] += 1
        try:
            try:
                upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
            except OSError:
                self.stats["upstream_refused"] += 1
                _reset(client_w)
                return
            conn = _Connection(self, client_r, client_w, upstream_r, upstream_w)
            self._connections.add(conn)
            try:
                await conn.run()
            finally:
                self._connections.discard(conn)
        finally:
            self._handlers.discard(task)

    def _roll(self) -> Fault | None:
        """The fault for the request just read, if any (explicit knobs first)."""
        if self.close_without_answer:
            return "close"
        if self.reset_after is not None:
            return "reset"
        if self.fault_rate and self._rng.random() < self.fault_rate:
            return self._rng.choice(self.faults)
        return None


class _Connection:
    """One proxied connection: two pumps and the fault chosen for the current request."""

    def __init__(
        self,
        proxy: FaultProxy,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        upstream_r: asyncio.StreamReader,
        upstream_w: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.client_r, self.client_w = client_r, client_w
        self.upstream_r, self.upstream_w = upstream_r, upstream_w
        self.reset_budget: int | None = None  # response bytes left before an RST
        self.done = asyncio.Event()

    def stop(self) -> None:
        self.done.set()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                up = tg.create_task(self._requests(), name="faultproxy-requests")
                down = tg.create_task(self._responses(), name="faultproxy-responses")
                await self.done.wait()
                up.cancel()
                down.cancel()
        except* OSError:
            pass  # a peer reset: the connection is over either way
        finally:
            for writer in (self.client_w, self.upstream_w):
                if not writer.is_closing():
                    writer.transport.abort()

    async def _requests(self) -> None:
        proxy = self.proxy
        while data := await self.client_r.read(CHUNK):
            fault = proxy._roll()
            if fault is not None:
                proxy.stats[fault] += 1
            if fault == "close":
                # Read the request, answer nothing, close (FIN) both sides.
                self.client_w.close()
                self.upstream_w.transport.abort()
                self.done.set()
                return
            if fault == "reset":
                limit = proxy.reset_after
                self.reset_budget = limit if limit is not None else self.proxy._rng.randint(1, 64)
            delay = proxy.latency + (proxy.random_latency if fault == "latency" else 0.0)
            if delay:
                await asyncio.sleep(delay)
            self.upstream_w.write(data)
            await self.upstream_w.drain()
        with contextlib.suppress(OSError):
            self.upstream_w.write_eof()
        await self.done.wait()

    async def _responses(self) -> None:
        proxy = self.proxy
        while True:
            size = CHUNK if proxy.bandwidth is None else max(1, min(CHUNK, proxy.bandwidth // 20))
            data = await self.upstream_r.read(size)
            if not data:
                break
            budget = self.reset_budget
            if budget is not None and len(data) >= budget:
                # Reset mid-response: part of the answer, then an RST.
                self.client_w.write(data[:budget])
                with contextlib.suppress(OSError):
                    await self.client_w.drain()
                _reset(self.client_w)
                self.done.set()
                return
            if budget is not None:
                self.reset_budget = budget - len(data)
            self.client_w.write(data)
            await self.client_w.drain()
            if proxy.bandwidth:
                await asyncio.sleep(len(data) / proxy.bandwidth)
        self.done.set()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0) rather than a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _main(args: argparse.Namespace) -> None:
    host, _, port = args.upstream.rpartition(":")
    proxy = FaultProxy(host or "127.0.0.1", int(port), port=args.port, seed=args.seed)
    proxy.fault_rate = args.fault_rate
    proxy.random_latency = args.fault_latency
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with proxy:
        print(json.dumps({"event": "listening", "port": proxy.port}), flush=True)
        await stop.wait()
    with contextlib.suppress(BrokenPipeError):  # the parent may be gone already
        print(json.dumps({"event": "stopped", **proxy.stats}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-latency", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    asyncio.run(_main(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
