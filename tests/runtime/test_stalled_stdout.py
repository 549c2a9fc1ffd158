"""``service serve`` whose stdout nobody reads: it drops log lines, never stops serving.

Black-box, on the default settings: stdout is a FIFO whose reader opens it
and does not read (a stuck log shipper, Docker's "blocking" log mode behind
a slow driver, a paused terminal). Under load ``/livez`` still answers within
100 ms and ``/metrics`` answers; the dropped lines are counted. Once the
reader drains the FIFO the service logs again (first a line saying how many
lines were lost), serves, and exits 0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.process import ROOT, free_port, scrape, service_env, stop_process

DROPPED = "service_log_dropped_total"


def _get(port: int, path: str, timeout: float = 2.0) -> tuple[int, float]:
    """Status and seconds of one GET on a new connection."""
    began = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.monotonic() - began
    finally:
        conn.close()


class Load(threading.Thread):
    """Keep-alive clients asking ``/v1/info`` until stopped: one access line per request."""

    def __init__(self, url: str, clients: int = 16) -> None:
        super().__init__(daemon=True)
        self.url, self.clients = url, clients
        self.stopped = threading.Event()
        self.answered = 0

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:

            async def client() -> None:
                while not self.stopped.is_set():
                    async with session.get(self.url) as resp:
                        await resp.read()
                        self.answered += 1

            await asyncio.gather(*(client() for _ in range(self.clients)))


class Drain(threading.Thread):
    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd, self.data = fd, bytearray()

    def run(self) -> None:
        os.set_blocking(self.fd, True)
        while chunk := os.read(self.fd, 1 << 16):
            self.data += chunk

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in bytes(self.data).splitlines()]


def test_a_stdout_nobody_reads_costs_log_lines_never_the_service(tmp_path: Path) -> None:
    fifo = tmp_path / "stdout"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open, never read (yet)
    http_port, admin_port = free_port(), free_port()
    env = {
        **os.environ,
        **service_env(SERVICE_HTTP__PORT=http_port, SERVICE_ADMIN__PORT=admin_port),
        "SERVICE_LOG__FORMAT": "json",
    }
    with open(fifo, "wb") as out, open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"], stdout=out, stderr=err, env=env, cwd=ROOT
        )
    load = Load(f"http://127.0.0.1:{http_port}/v1/info")
    drain = Drain(reader)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if _get(http_port, "/livez", 0.5)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.1)
        load.start()
        livez: list[float] = []
        scrapes: list[float] = []
        began = time.monotonic()
        while time.monotonic() - began < 30:
            time.sleep(0.25)
            status, seconds = _get(http_port, "/livez")
            assert status == 200
            t0 = time.monotonic()
            dropped = scrape(f"http://127.0.0.1:{admin_port}/metrics")[DROPPED]
            scrapes.append(time.monotonic() - t0)
            if dropped:
                livez.append(seconds)  # the pipe and the buffer are full from here on
            if len(livez) >= 12 and time.monotonic() - began >= 3:
                break
        load.stopped.set()
        load.join(10)
        print(
            f"load: {load.answered} requests; /livez while stalled (ms):",
            [round(s * 1000, 1) for s in livez],
        )
        print(f"dropped: {dropped}; scrape seconds max {max(scrapes):.3f}")
        assert len(livez) >= 12, f"nothing dropped after {load.answered} requests"
        assert max(livez) < 0.1, livez
        # The reader comes back: the service logs again and keeps serving.
        drain.start()
        time.sleep(0.5)
        for _ in range(20):
            assert _get(http_port, "/v1/info")[0] == 200
        time.sleep(0.5)
        final = scrape(f"http://127.0.0.1:{admin_port}/metrics")[DROPPED]
        assert final >= dropped
        assert stop_process(proc, 30) == 0, (tmp_path / "stderr").read_text()
        drain.join(10)
    finally:
        load.stopped.set()
        stop_process(proc, 5)
        if not drain.is_alive():
            os.close(reader)
    lines = drain.lines()
    gaps = [i for i, line in enumerate(lines) if line["event"].startswith("log lines dropped")]
    assert gaps, "no line says how many lines were dropped"
    assert sum(lines[i]["dropped"] for i in gaps) == final
    # After the last gap: the requests made once the reader was back, and the shutdown.
    after = lines[gaps[-1] + 1 :]
    assert sum(1 for line in after if line.get("path") == "/v1/info") >= 20
    assert [line["exit_code"] for line in after if line["event"] == "shutdown complete"] == [0]
