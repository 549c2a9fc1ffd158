"""10,000 idle TCP connections held by a real service process, on both loops.

The service's RSS growth per connection is measured and must stay under
4 KiB; ``service_tcp_connections_active`` must read
10,000. The clients live in this process and the service in another: each
side holds 10,000 sockets, under the open-file limit of 20,000 per process.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from pathlib import Path

import pytest

from tests.support.process import running_service, scrape

CONNECTIONS = 10_000
TARGET_BYTES_PER_CONNECTION = 4096


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def open_many(port: int, n: int, parallel: int = 200) -> list[asyncio.Transport]:
    """Open ``n`` connections that send nothing, ``parallel`` at a time (under the backlog)."""
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(parallel)

    async def one() -> asyncio.Transport:
        async with limit:
            transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            return transport

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def active(url: str, want: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    value = -1.0
    while time.monotonic() < deadline:
        value = (await asyncio.to_thread(scrape, url))["service_tcp_connections_active"]
        if value == want:
            return value
        await asyncio.sleep(0.1)
    return value


@pytest.mark.slow
@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_ten_thousand_idle_connections_cost_under_4_kib_each(
    loop_kind: str, tmp_path: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < CONNECTIONS + 1000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, CONNECTIONS + 2000), hard))
    env = {
        "SERVICE_LOOP__KIND": loop_kind,
        "SERVICE_TCP__MAX_CONNECTIONS": str(CONNECTIONS),
        "SERVICE_PIPELINE__SINK_PATH": str(tmp_path / "events.jsonl"),
    }

    async def main(port: int, pid: int, metrics_url: str) -> tuple[int, int, float]:
        # Warm up (first allocations of every code path), then take the baseline.
        for t in await open_many(port, 200):
            t.close()
        assert await active(metrics_url, 0, 10) == 0
        before = rss_bytes(pid)
        transports = await open_many(port, CONNECTIONS)
        try:
            value = await active(metrics_url, CONNECTIONS, 30)
            await asyncio.sleep(0.5)  # let the sweeper run over all of them once
            after = rss_bytes(pid)
        finally:
            for t in transports:
                t.close()
        return before, after, value

    with running_service(env=env) as proc:
        assert proc.proc is not None
        began = time.monotonic()
        before, after, value = asyncio.run(
            main(proc.ports["tcp"], proc.proc.pid, proc.url("/metrics", "admin"))
        )
        elapsed = time.monotonic() - began
        assert proc.stop() == 0, proc.output()[-3000:]

    per_connection = (after - before) / CONNECTIONS
    print(
        f"\n{loop_kind}: {CONNECTIONS} idle connections, RSS {before / 2**20:.1f} -> "
        f"{after / 2**20:.1f} MiB, {per_connection:.0f} bytes per connection, "
        f"{elapsed:.1f} s",
        file=sys.stderr,
    )
    assert value == CONNECTIONS
    assert per_connection < TARGET_BYTES_PER_CONNECTION
