"""TCP: ``PING`` round trips through the service against a bare uvloop streams echo server.

The service runs as ``python -m service serve`` on its defaults (uvloop,
metrics, pipeline idle); the baseline is the textbook asyncio streams echo
server (``start_server``, ``readline``, ``write``, ``drain``) on uvloop. Both
are driven by the same load client: a separate process with 32 connections
on uvloop ``Protocol``s, each sending ``PING`` and waiting for the answer
before the next (round trips, not pipelining). Servers are pinned to core 0,
the client to core 1, and the runs alternate (bare, service, ...) so a noisy
neighbour hits both sides alike; the row reports the ratio of the medians.
Target: 0.85.

Run it alone, on an otherwise idle machine: ``make bench BENCH_ARGS="--only tcp"``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds as _cpu_seconds
from bench.common import free_port as _free_port
from bench.common import pin as _pin
from bench.common import pinned_server, wait_pong

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 3  # measured runs per side, alternating
CONNECTIONS = 32

# The baseline: the same uvloop, asyncio streams, nothing else.
BARE_ECHO = """
import asyncio, sys, uvloop

async def handle(reader, writer):
    try:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with server:
        await server.serve_forever()

uvloop.run(main())
"""

# The load client: CONNECTIONS closed loops of one PING each; counts answered lines.
CLIENT = """
import asyncio, json, sys, time, uvloop

host, port, conns, warmup, duration = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                       float(sys.argv[4]), float(sys.argv[5]))

class Pinger(asyncio.Protocol):
    def __init__(self):
        self.count = 0
        self.running = True
        self.first = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(b"PING\\n")

    def data_received(self, data):
        if self.first is None:
            self.first = data
        n = data.count(b"\\n")  # one line in flight, so n is 0 or 1
        self.count += n
        if n and self.running:
            self.transport.write(b"PING\\n" * n)

async def main():
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(conns):
        _, proto = await loop.create_connection(Pinger, host, port)
        clients.append(proto)
    await asyncio.sleep(warmup)
    start = [c.count for c in clients]
    began = time.perf_counter()
    await asyncio.sleep(duration)
    done = sum(c.count for c in clients) - sum(start)
    seconds = time.perf_counter() - began
    for c in clients:
        c.running = False
        c.transport.close()
    print(json.dumps({"round_trips": done, "seconds": seconds,
                      "first_answer": clients[0].first.decode(errors="replace")}))

uvloop.run(main())
"""


@contextmanager
def _server(
    cmd: list[str], port: int, env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with pinned_server(cmd, lambda proc: wait_pong(port, proc), env, log_path) as proc:
        yield proc


def load(
    port: int, duration: float, warmup: float = 0.5, connections: int = CONNECTIONS
) -> tuple[float, str]:
    """Round trips per second the load client (pinned to core 1) got, and its first answer."""
    cmd = [
        *_pin(1),
        sys.executable,
        "-c",
        CLIENT,
        "127.0.0.1",
        str(port),
        str(connections),
        str(warmup),
        str(duration),
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=duration + warmup + 30
    )
    result = json.loads(out.stdout)
    return result["round_trips"] / result["seconds"], result["first_answer"]


def measure(
    duration: float, rounds: int = ROUNDS, service_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Alternate load runs against both servers; the medians and their ratio."""
    bare_port, svc_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "0"}
    runs: dict[str, list[float]] = {"bare": [], "service": [], "bare_cpu": [], "service_cpu": []}
    with tempfile.TemporaryDirectory(prefix="bench-tcp-") as tmp:
        svc_env = {
            **env,
            "SERVICE_HTTP__HOST": "127.0.0.1",
            "SERVICE_HTTP__PORT": "0",
            "SERVICE_TCP__HOST": "127.0.0.1",
            "SERVICE_TCP__PORT": str(svc_port),
            "SERVICE_ADMIN__HOST": "127.0.0.1",
            "SERVICE_ADMIN__PORT": "0",
            "SERVICE_LOG__FORMAT": "json",
            "SERVICE_PIPELINE__SINK_PATH": str(Path(tmp) / "events.jsonl"),
            **(service_env or {}),
        }
        with (
            _server(
                [sys.executable, "-c", BARE_ECHO, str(bare_port)],
                bare_port,
                env,
                Path(tmp) / "bare.log",
            ) as bare_proc,
            _server(
                [sys.executable, "-m", "service", "serve"],
                svc_port,
                svc_env,
                Path(tmp) / "service.log",
            ) as svc_proc,
        ):
            load(bare_port, 1)  # warm both up
            _, svc_answer = load(svc_port, 1)
            if svc_answer != "PONG\n":
                raise RuntimeError(f"the service answered {svc_answer!r} to PING")
            for _ in range(rounds):
                for name, port, proc in (
                    ("bare", bare_port, bare_proc),
                    ("service", svc_port, svc_proc),
                ):
                    # Server CPU per round trip is steadier than throughput on a
                    # shared machine: a neighbour steals time, not cycles per trip.
                    cpu = _cpu_seconds(proc.pid)
                    rate, _ = load(port, duration)
                    runs[name].append(rate)
                    runs[f"{name}_cpu"].append(
                        (_cpu_seconds(proc.pid) - cpu) / (rate * duration) * 1e6
                    )
    bare_median, svc_median = statistics.median(runs["bare"]), statistics.median(runs["service"])
    return {
        **runs,
        "bare_median": bare_median,
        "service_median": svc_median,
        "ratio": svc_median / bare_median,
        "bare_cpu_us": statistics.median(runs["bare_cpu"]),
        "service_cpu_us": statistics.median(runs["service_cpu"]),
    }


def run(duration: float) -> list[dict[str, Any]]:
    m = measure(duration)
    runs = ", ".join(f"{b:,.0f}/{s:,.0f}" for b, s in zip(m["bare"], m["service"], strict=True))
    return [
        {
            "name": f"TCP PING round trips ({CONNECTIONS} connections, 1 core each)",
            "value": m["service_median"],
            "unit": "round trips/s",
            "baseline": "bare uvloop streams echo",
            "baseline_value": m["bare_median"],
            "ratio": m["ratio"],
            "target": ">= 0.85",
            "note": f"median of {len(m['bare'])} alternating runs (bare/service: {runs}); "
            "same load client (uvloop Protocols, one line in flight per connection); "
            f"server CPU per round trip: bare {m['bare_cpu_us']:.1f} us, "
            f"service {m['service_cpu_us']:.1f} us",
        }
    ]


if __name__ == "__main__":
    # python -m bench.bench_tcp [DURATION [ROUNDS [SERVICE_X=Y ...]]]: for profiling by hand.
    args = sys.argv[1:]
    extra = dict(a.split("=", 1) for a in args[2:])
    print(
        json.dumps(
            measure(
                float(args[0]) if args else 5.0, int(args[1]) if len(args) > 1 else ROUNDS, extra
            ),
            indent=2,
        )
    )
