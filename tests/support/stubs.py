"""Downstream stubs for tests (in-process on real sockets, or processes) and clients of them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from service.runtime.downstream.client import DownstreamClient
from service.runtime.metrics import Metrics
from service.runtime.settings import DownstreamService
from service.tools import stub
from tests.support.process import ServiceProcess, service_env


@dataclass
class Stub:
    app: web.Application
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stats(self) -> stub.Stats:
        return self.app[stub.STATS]

    @property
    def knobs(self) -> stub.Knobs:
        return self.app[stub.KNOBS]


@contextlib.asynccontextmanager
async def running_stub(name: str, **knobs: float) -> AsyncIterator[Stub]:
    app = stub.create_app(name, stub.Knobs(**knobs), seed=1)
    async with stub.serving(app) as port:
        yield Stub(app, port)


@contextlib.asynccontextmanager
async def running_stubs(**orders_knobs: float) -> AsyncIterator[tuple[Stub, Stub]]:
    async with running_stub("users") as users, running_stub("orders", **orders_knobs) as orders:
        yield users, orders


def service_settings(url: str, **overrides: Any) -> DownstreamService:
    """One downstream's settings: ``url`` and ``overrides`` over the defaults."""
    return DownstreamService(url=url, **overrides)


async def started_client(name: str, url: str, **overrides: Any) -> DownstreamClient:
    """A started client of ``url`` (close it); ``overrides`` are downstream settings."""
    client = DownstreamClient(name, service_settings(url, **overrides), Metrics())
    await client.start()
    return client


async def wait_for(cond: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll ``cond`` until true or ``timeout``; the result of the last check."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.005)
    return True


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def stub_process(name: str, *args: str) -> Iterator[ServiceProcess]:
    """``service stub --name NAME --port 0 ARGS`` in a subprocess, stopped at the end."""
    with _process(ServiceProcess(["stub", "--name", name, "--port", "0", *args])) as proc:
        yield proc


@contextlib.contextmanager
def _process(proc: ServiceProcess) -> Iterator[ServiceProcess]:
    proc.start()
    try:
        proc.wait_listening()
        yield proc
    finally:
        if proc.proc is not None:
            if proc.proc.poll() is None:
                proc.stop(15)
            if proc.proc.stdout is not None:
                proc.proc.stdout.close()  # ServiceProcess leaves the pipe open


@contextlib.contextmanager
def service_process(env: dict[str, str]) -> Iterator[ServiceProcess]:
    """``service serve`` with every port free, loopback only, and ``env`` on top."""
    with _process(ServiceProcess(["serve"], env={**service_env(), **env})) as proc:
        yield proc
