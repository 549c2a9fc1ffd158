"""End-to-end pipeline throughput: events/s from acknowledgement to fsynced sink line.

The service runs as ``python -m service serve`` on its defaults (uvloop,
file sink with fsync per batch, enrichment through the users lookup with a
working set of 100 users, so every lookup after the first is a cache hit),
pinned to core 0; the load client runs in a separate process on core 1:

* HTTP: 8 keep-alive connections, each posting batches of 100 events and
  waiting for the 202 before the next (closed loop; after a 429 it waits
  5 ms, as a client told to retry later would);
* TCP: 16 connections, each sending a window of 64 event lines and waiting
  for the 64 ``OK <id>`` answers before the next window.

The rate counted is what reached the sink (``pipeline_events_total{stage=
"sink",outcome="delivered"}`` over the measured window, scraped from the
admin port), not only what was acknowledged; the ack latency percentiles are
the client's (per request for HTTP, per window for TCP). The baseline is the
TCP ``PING`` round-trip rate of the same service process in the same run
(bench_tcp's client), so the cost of the pipeline itself is visible.
Target: at least 50,000 events/s. After the runs the service gets
SIGTERM and its summary line must show nothing dropped.

Run it alone, on an otherwise idle machine: ``make bench BENCH_ARGS="--only pipeline"``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_tcp import load as ping_load  # noqa: E402
from bench.common import cpu_seconds as _cpu_seconds  # noqa: E402
from bench.common import free_port as _free_port  # noqa: E402
from bench.common import pin as _pin  # noqa: E402
from bench.common import stop_service  # noqa: E402
from bench.common import wait_pong as _wait_pong  # noqa: E402

ROUNDS = 3
TARGET = 50_000
DELIVERED = 'service_pipeline_events_total{outcome="delivered",stage="sink"}'
ACCEPTED = 'service_pipeline_events_total{outcome="accepted",stage="ingest"}'

# The load client. argv: mode host port conns per_send warmup duration
CLIENT = r"""
import asyncio, json, sys, time, uvloop

mode, host, port, conns, per_send, warmup, duration = (
    sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
    float(sys.argv[6]), float(sys.argv[7]))
USERS = 100
BACKOFF = 0.005

def event(i):
    return {"user_id": f"u{i % USERS}", "type": "click", "payload": {"n": i, "page": "/home"}}

class Sender(asyncio.Protocol):
    def __init__(self, index):
        self.index = index
        self.acked = 0
        self.latencies = []
        self.statuses = {}
        self.running = True
        self.buf = b""
        self.pending = 0
        self.measuring = False
        if mode == "http":
            body = json.dumps([event(index * 1000 + i) for i in range(per_send)]).encode()
            self.payload = (f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\n"
                            "Content-Type: application/json\r\n"
                            f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        else:
            self.payload = b"".join(json.dumps(event(index * 1000 + i)).encode() + b"\n"
                                    for i in range(per_send))

    def connection_made(self, transport):
        self.transport = transport
        self.send()

    def send(self):
        self.sent_at = time.perf_counter()
        self.pending = per_send
        self.transport.write(self.payload)

    def done_one(self, status, events):
        if self.measuring:
            self.latencies.append(time.perf_counter() - self.sent_at)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status in ("202", "OK"):
                self.acked += events
        if not self.running:
            return
        if status == "429":
            # Back off as told (scaled down from Retry-After's whole second), like
            # a real client: re-sending at once would measure 429s, not the pipeline.
            asyncio.get_running_loop().call_later(BACKOFF, self.send)
        else:
            self.send()

    def data_received(self, data):
        self.buf += data
        if mode == "http":
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buf[:end].lower()
                i = head.index(b"content-length:") + 15
                length = int(head[i:head.index(b"\r\n", i) if b"\r\n" in head[i:] else None])
                total = end + 4 + length
                if len(self.buf) < total:
                    return
                status = self.buf[9:12].decode()
                self.buf = self.buf[total:]
                self.done_one(status, per_send)
        else:
            *lines, self.buf = self.buf.split(b"\n")
            for line in lines:
                self.pending -= 1
                kind = "OK" if line.startswith(b"OK ") else line.split(b" ", 2)[1].decode()
                if kind == "OK" and self.measuring:
                    self.acked += 1
                elif self.measuring:
                    self.statuses[kind] = self.statuses.get(kind, 0) + 1
                if self.pending == 0:
                    self.done_one("window", 0)

async def main():
    loop = asyncio.get_running_loop()
    senders = []
    for i in range(conns):
        _, proto = await loop.create_connection(lambda i=i: Sender(i), host, port)
        senders.append(proto)
    await asyncio.sleep(warmup)
    print("start", flush=True)
    for s in senders:
        s.measuring = True
    began = time.perf_counter()
    await asyncio.sleep(duration)
    seconds = time.perf_counter() - began
    for s in senders:
        s.measuring = False
        s.running = False
    await asyncio.sleep(0.2)
    lat = sorted(x for s in senders for x in s.latencies)
    statuses = {}
    for s in senders:
        for k, v in s.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
    pct = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] if lat else 0.0
    print(json.dumps({"acked": sum(s.acked for s in senders), "seconds": seconds,
                      "p50": pct(0.5), "p99": pct(0.99), "max": lat[-1] if lat else 0.0,
                      "statuses": statuses}), flush=True)
    for s in senders:
        s.transport.close()

uvloop.run(main())
"""


def _counter(admin_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _delivered(admin_port: int) -> float:
    return _counter(admin_port, DELIVERED)


def _wait_idle(admin_port: int, timeout: float = 30.0) -> None:
    """Until the sink has caught up with everything acknowledged (no backlog between runs)."""
    deadline = time.monotonic() + timeout
    while _counter(admin_port, ACCEPTED) > _delivered(admin_port):
        if time.monotonic() > deadline:
            raise RuntimeError("the pipeline did not catch up")
        time.sleep(0.1)


def _drive(
    mode: str,
    port: int,
    admin_port: int,
    pid: int,
    conns: int,
    per_send: int,
    duration: float,
    warmup: float = 1.0,
) -> dict[str, Any]:
    """One load run; events delivered to the sink per second over the measured window."""
    _wait_idle(admin_port)
    cmd = [
        *_pin(1),
        sys.executable,
        "-c",
        CLIENT,
        mode,
        "127.0.0.1",
        str(port),
        str(conns),
        str(per_send),
        str(warmup),
        str(duration),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "start":
        raise RuntimeError(f"{mode} load client failed to start")
    before, t0, cpu = _delivered(admin_port), time.perf_counter(), _cpu_seconds(pid)
    result = json.loads(proc.stdout.readline())
    after, t1, cpu = _delivered(admin_port), time.perf_counter(), _cpu_seconds(pid) - cpu
    proc.wait(30)
    result["delivered_per_s"] = (after - before) / (t1 - t0)
    # Service CPU (all its threads) per delivered event: steadier than the rate
    # on a shared machine, where a neighbour steals time, not cycles per event.
    result["cpu_us_per_event"] = cpu / max(1.0, after - before) * 1e6
    result["acked_per_s"] = result["acked"] / result["seconds"]
    return result


@contextmanager
def users_stub() -> Iterator[dict[str, str]]:
    """The users stub on core 1 (beside the client), as the env that points the service at it.

    Enrichment goes through the real downstream client; with a working set of
    100 users every lookup after the first is a cache hit.
    """
    port = _free_port()
    stub = subprocess.Popen(
        [
            *_pin(1),
            sys.executable,
            "-m",
            "service",
            "stub",
            "--name",
            "users",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/users/u1", timeout=1).close()
                break
            except OSError:
                if stub.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the users stub did not start") from None
                time.sleep(0.05)
        yield {"SERVICE_DOWNSTREAM__USERS_URL": f"http://127.0.0.1:{port}"}
    finally:
        stub.terminate()
        stub.wait(10)


def measure(duration: float, rounds: int = ROUNDS) -> dict[str, Any]:
    http_port, tcp_port, admin_port = _free_port(), _free_port(), _free_port()
    runs: dict[str, list[dict[str, Any]]] = {"http": [], "tcp": []}
    pings: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp, users_stub() as users:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            **users,
            "SERVICE_HTTP__HOST": "127.0.0.1",
            "SERVICE_HTTP__PORT": str(http_port),
            "SERVICE_TCP__HOST": "127.0.0.1",
            "SERVICE_TCP__PORT": str(tcp_port),
            "SERVICE_ADMIN__HOST": "127.0.0.1",
            "SERVICE_ADMIN__PORT": str(admin_port),
            "SERVICE_LOG__FORMAT": "json",
            "SERVICE_PIPELINE__SINK_PATH": str(Path(tmp) / "events.jsonl"),
        }
        log_path = Path(tmp) / "service.log"
        with log_path.open("wb") as out:
            svc = subprocess.Popen(
                [*_pin(0), sys.executable, "-m", "service", "serve"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
            try:
                _wait_pong(tcp_port, svc)
                for _ in range(rounds):  # alternate, so a noisy neighbour hits all alike
                    runs["http"].append(
                        _drive("http", http_port, admin_port, svc.pid, 8, 100, duration)
                    )
                    runs["tcp"].append(
                        _drive("tcp", tcp_port, admin_port, svc.pid, 16, 64, duration)
                    )
                    _wait_idle(admin_port)
                    pings.append(ping_load(tcp_port, duration)[0])
            finally:
                code, summary = stop_service(svc, log_path)
        lines = sum(1 for _ in (Path(tmp) / "events.jsonl").open("rb"))
    return {
        "runs": runs,
        "pings": pings,
        "ping_median": statistics.median(pings),
        "exit_code": code,
        "summary": summary,
        "sink_lines": lines,
    }


def _row(name: str, mode: str, m: dict[str, Any], what: str) -> dict[str, Any]:
    runs = m["runs"][mode]
    rate = statistics.median(r["delivered_per_s"] for r in runs)
    p99 = statistics.median(r["p99"] for r in runs) * 1000
    p50 = statistics.median(r["p50"] for r in runs) * 1000
    refused = sum(
        v for r in runs for k, v in r["statuses"].items() if k not in ("202", "OK", "window")
    )
    s = m["summary"]
    per_run = ", ".join(f"{r['delivered_per_s']:,.0f}" for r in runs)
    cpu_us = statistics.median(r["cpu_us_per_event"] for r in runs)
    return {
        "name": name,
        "value": rate,
        "unit": "events/s",
        "baseline": "TCP PING round trips, same service",
        "baseline_value": m["ping_median"],
        "ratio": rate / m["ping_median"],
        "target": f">= {TARGET:,} events/s",
        "note": f"median of {len(runs)} runs ({per_run} delivered/s); service CPU "
        f"{cpu_us:.1f} us/event (one free core: {1e6 / cpu_us:,.0f} events/s); "
        f"ack latency {what}: "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms; refused answers {refused}; shutdown: "
        f"exit {m['exit_code']}, accepted {s.get('accepted')}, delivered "
        f"{s.get('delivered')}, dropped {s.get('dropped')}, sink lines {m['sink_lines']}",
    }


def run(duration: float) -> list[dict[str, Any]]:
    m = measure(duration)
    return [
        _row("pipeline end to end: HTTP batches of 100 (8 connections)", "http", m, "per request"),
        _row(
            "pipeline end to end: TCP event lines (16 connections, windows of 64)",
            "tcp",
            m,
            "per window of 64",
        ),
    ]


if __name__ == "__main__":
    # python bench/bench_pipeline.py [DURATION [ROUNDS]]: by hand, under flock.
    args = sys.argv[1:]
    print(
        json.dumps(
            measure(float(args[0]) if args else 3.0, int(args[1]) if len(args) > 1 else 1), indent=2
        )
    )
