"""End-to-end pipeline throughput into Redis Streams against the file sink, same run.

Two ``python -m service serve`` processes run side by side, both pinned to
core 0 and otherwise identical (defaults, uvloop): one with the file sink
(fsync per batch), one with ``pipeline.sink = "redis"`` writing to a local
``redis-server`` (``appendonly yes``, ``appendfsync always``: an fsync per
batch on the Redis side too, as in the compose file), pinned to core 1 with
the load client. They are driven in turn, alternating, so a noisy neighbour
hits both alike; only the driven one uses CPU. The load is bench_pipeline's
client (HTTP: 8 connections posting batches of 100 events; TCP: 16
connections sending windows of 64 event lines), and the rate counted is what
reached the sink (``pipeline_events_total{stage="sink",outcome="delivered"}``).
Target: the Redis sink at least 0.7 of the file sink's rate.
After the runs both services get SIGTERM; the summary must show nothing
dropped, and the stream must hold exactly what the Redis service delivered.

Run it alone, on an otherwise idle machine: ``make bench BENCH_ARGS="--only redis"``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_pipeline import (  # noqa: E402
    ACCEPTED,
    CLIENT,
    DELIVERED,
    _counter,
    users_stub,
)
from bench.common import free_port as _free_port  # noqa: E402
from bench.common import loopback_env  # noqa: E402
from bench.common import pin as _pin  # noqa: E402
from bench.common import stop_service as _stop  # noqa: E402
from bench.common import wait_pong as _wait_pong  # noqa: E402

ROUNDS = 2
TARGET = 0.7
STREAM = "events-bench"
LOADS = {"http": (8, 100), "tcp": (16, 64)}  # connections, events per send


def _wait_idle(admin_port: int, timeout: float = 60.0) -> None:
    """Until the sink has caught up with everything acknowledged (no backlog between runs)."""
    deadline = time.monotonic() + timeout
    while _counter(admin_port, ACCEPTED) > _counter(admin_port, DELIVERED):
        if time.monotonic() > deadline:
            raise RuntimeError("the pipeline did not catch up")
        time.sleep(0.1)


def _drive(mode: str, ports: dict[str, int], duration: float) -> float:
    """One load run; events delivered to the sink per second over the measured window."""
    _wait_idle(ports["admin"])
    conns, per_send = LOADS[mode]
    cmd = [
        *_pin(1),
        sys.executable,
        "-c",
        CLIENT,
        mode,
        "127.0.0.1",
        str(ports[mode]),
        str(conns),
        str(per_send),
        "1.0",
        str(duration),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "start":
        raise RuntimeError(f"{mode} load client failed to start")
    before, t0 = _counter(ports["admin"], DELIVERED), time.perf_counter()
    proc.stdout.readline()  # the client's report: the rate counted is the sink's
    after, t1 = _counter(ports["admin"], DELIVERED), time.perf_counter()
    proc.wait(30)
    return (after - before) / (t1 - t0)


def _redis_cli(port: int, *args: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)).encode())
        return s.recv(4096).decode()


def _start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    proc = subprocess.Popen(
        [
            *_pin(1),
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            # Not redis.log: that is the log of the service named "redis" (_start_service).
            "--logfile",
            str(directory / "redis-server.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            if _redis_cli(port, "PING").startswith("+PONG"):
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)


def _start_service(
    tmp: Path, name: str, extra: dict[str, str]
) -> tuple[subprocess.Popen[bytes], dict[str, int], Path]:
    ports = {"http": _free_port(), "tcp": _free_port(), "admin": _free_port()}
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        **loopback_env(ports, tmp / f"{name}.jsonl"),
        **extra,
    }
    log_path = tmp / f"{name}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [*_pin(0), sys.executable, "-m", "service", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    _wait_pong(ports["tcp"], proc)
    return proc, ports, log_path


def measure(duration: float, rounds: int = ROUNDS) -> dict[str, Any]:
    rates: dict[str, dict[str, list[float]]] = {mode: {"file": [], "redis": []} for mode in LOADS}
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp_name, users_stub() as users:
        tmp = Path(tmp_name)
        redis, redis_port = _start_redis(tmp)
        started: dict[str, tuple[subprocess.Popen[bytes], dict[str, int], Path]] = {}
        results: dict[str, tuple[int, dict[str, Any]]] = {}
        try:
            started["file"] = _start_service(tmp, "file", users)
            started["redis"] = _start_service(
                tmp,
                "redis",
                {
                    **users,
                    "SERVICE_PIPELINE__SINK": "redis",
                    "SERVICE_PIPELINE__REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                    "SERVICE_PIPELINE__REDIS_STREAM": STREAM,
                },
            )
            for i in range(rounds):
                for mode in LOADS:
                    # Alternate which sink goes first, so drift hits both alike.
                    for sink in ("file", "redis") if i % 2 == 0 else ("redis", "file"):
                        rates[mode][sink].append(_drive(mode, started[sink][1], duration))
        finally:
            for name, (proc, _, log_path) in started.items():
                results[name] = _stop(proc, log_path)
            try:
                xlen = int(_redis_cli(redis_port, "XLEN", STREAM).strip()[1:])
            except (OSError, ValueError):
                xlen = -1
            redis.send_signal(signal.SIGTERM)
            redis.wait(30)
    return {"rates": rates, "results": results, "xlen": xlen}


def run(duration: float) -> list[dict[str, Any]]:
    m = measure(duration)
    rows = []
    file_code, file_summary = m["results"]["file"]
    redis_code, redis_summary = m["results"]["redis"]
    if (file_code, redis_code) != (0, 0) or m["xlen"] != redis_summary.get("delivered"):
        raise RuntimeError(
            f"lost or doubled events: exit codes {file_code}, {redis_code}, "
            f"redis summary {redis_summary}, stream length {m['xlen']}"
        )
    shutdown = (
        f"shutdown: file exit {file_code} dropped {file_summary.get('dropped')}; "
        f"redis exit {redis_code} dropped {redis_summary.get('dropped')}, delivered "
        f"{redis_summary.get('delivered')}, stream length {m['xlen']}"
    )
    for mode, what in (
        ("http", "HTTP batches of 100 (8 connections)"),
        ("tcp", "TCP event lines (16 connections, windows of 64)"),
    ):
        redis_rates, file_rates = m["rates"][mode]["redis"], m["rates"][mode]["file"]
        rate, base = statistics.median(redis_rates), statistics.median(file_rates)
        rows.append(
            {
                "name": f"pipeline into Redis Streams: {what}",
                "value": rate,
                "unit": "events/s",
                "baseline": "file sink, same load",
                "baseline_value": base,
                "ratio": rate / base if base else None,
                "target": f">= {TARGET} of the file sink",
                "note": f"median of {len(redis_rates)} runs each (redis "
                f"{', '.join(f'{r:,.0f}' for r in redis_rates)}; file "
                f"{', '.join(f'{r:,.0f}' for r in file_rates)} delivered/s); {shutdown}",
            }
        )
    return rows


if __name__ == "__main__":
    # python bench/bench_redis.py [DURATION [ROUNDS]]: by hand, under flock.
    args = sys.argv[1:]
    print(
        json.dumps(
            measure(float(args[0]) if args else 3.0, int(args[1]) if len(args) > 1 else 1), indent=2
        )
    )
