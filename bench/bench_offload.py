"""Offloading: the event loop under ``POST /v1/hash`` load, against the same work on the loop.

The service runs as ``tests/apps/offload_app.py`` (the shipped service plus a
test-only ``POST /test/hash-inline`` route that hashes on the loop). wrk
drives each route at full load (8 connections, within the CPU backlog) while
a prober times ``GET /livez`` every 5 ms; the loop lag is read from the
service's own ``service_event_loop_lag_seconds`` histogram (sampled every
10 ms). The hash throughput is compared with ``hashlib.scrypt`` in as many
bare threads as the executor has workers, measured in the same run.

Run it alone, on an otherwise idle machine: ``make bench BENCH_ARGS="--only offload"``.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.domain.routes.hash import DEFAULT_SALT, SCRYPT_P, SCRYPT_R  # noqa: E402
from service.runtime.metrics import LAG_BUCKETS  # noqa: E402
from tests.support.process import ServiceProcess, scrape, service_env  # noqa: E402

WORKERS = 2
COST = 16384
CONNECTIONS = 8
LAG = "service_event_loop_lag_seconds_bucket"
BODY = '{"data": "correct horse battery staple"}'


def _lag_buckets(proc: ServiceProcess) -> dict[float, float]:
    prefix = f'{LAG}{{le="'
    return {
        float(k[len(prefix) : -2]): v
        for k, v in scrape(proc.url("/metrics", "admin")).items()
        if k.startswith(prefix)
    }


def _lag_p99(before: dict[float, float], after: dict[float, float]) -> float:
    """The upper bound of the bucket holding the 99th percentile (inf if past the last)."""
    delta = {le: after[le] - before.get(le, 0.0) for le in after}
    total = delta[math.inf]
    return next(le for le in sorted(delta) if delta[le] >= 0.99 * total)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def _probe_livez(port: int, stop: threading.Event, out: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        start = time.perf_counter()
        conn.request("GET", "/livez")
        conn.getresponse().read()
        out.append(time.perf_counter() - start)
        stop.wait(0.005)
    conn.close()


def _drive(proc: ServiceProcess, path: str, seconds: float, script: Path) -> dict[str, float]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed")
    before = _lag_buckets(proc)
    latencies: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=_probe_livez, args=(proc.ports["http"], stop, latencies))
    prober.start()
    try:
        out = subprocess.run(
            [
                wrk,
                "-t1",
                f"-c{CONNECTIONS}",
                f"-d{seconds:g}s",
                "--timeout",
                "30s",
                "-s",
                str(script),
                proc.url(path),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        stop.set()
        prober.join(30)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {
        "lag_p99_ms": _lag_p99(before, _lag_buckets(proc)) * 1000,
        "livez_p99_ms": _p99(latencies) * 1000,
        "rps": float(rate.group(1)) if rate else 0.0,
    }


def _bare_scrypt_rate(seconds: float) -> float:
    """Hashes per second from ``WORKERS`` plain threads: the ceiling for the executor."""
    done = [0] * WORKERS
    deadline = time.monotonic() + seconds

    def work(i: int) -> None:
        while time.monotonic() < deadline:
            hashlib.scrypt(
                b"correct horse battery staple",
                salt=DEFAULT_SALT,
                n=COST,
                r=SCRYPT_R,
                p=SCRYPT_P,
                maxmem=129 * SCRYPT_R * COST,
                dklen=32,
            )
            done[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / seconds


def run(duration: float) -> list[dict[str, Any]]:
    env = {
        **service_env(),
        "SERVICE_OFFLOAD__CPU_WORKERS": str(WORKERS),
        "SERVICE_OFFLOAD__HASH_COST": str(COST),
        "SERVICE_METRICS__LOOP_LAG_INTERVAL": "0.01",
        "SERVICE_LOG__ACCESS_LOG": "false",
    }
    proc = ServiceProcess([], env=env, module="tests.apps.offload_app").start()
    try:
        proc.wait_listening()
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "post.lua"
            script.write_text(
                'wrk.method = "POST"\n'
                'wrk.headers["Content-Type"] = "application/json"\n'
                f"wrk.body = '{BODY}'\n"
            )
            offloaded = _drive(proc, "/v1/hash", duration, script)
            inline = _drive(proc, "/test/hash-inline", duration, script)
    finally:
        proc.stop()
    bare = _bare_scrypt_rate(duration)
    note = (
        f"{WORKERS} CPU workers, scrypt n={COST}, wrk -c{CONNECTIONS}; lag buckets "
        f"{', '.join(f'{b * 1000:g}' for b in LAG_BUCKETS[:8])} ms"
    )
    return [
        {
            "name": "loop lag p99 under POST /v1/hash load",
            "value": offloaded["lag_p99_ms"],
            "unit": "ms",
            "baseline": "same work inline on the loop",
            "baseline_value": inline["lag_p99_ms"],
            "ratio": offloaded["lag_p99_ms"] / inline["lag_p99_ms"],
            "target": "< 10 ms",
            "note": note,
        },
        {
            "name": "GET /livez p99 under POST /v1/hash load",
            "value": offloaded["livez_p99_ms"],
            "unit": "ms",
            "baseline": "same work inline on the loop",
            "baseline_value": inline["livez_p99_ms"],
            "ratio": offloaded["livez_p99_ms"] / inline["livez_p99_ms"],
            "target": "< 20 ms",
            "note": note,
        },
        {
            "name": "POST /v1/hash throughput",
            "value": offloaded["rps"],
            "unit": "req/s",
            "baseline": f"hashlib.scrypt in {WORKERS} bare threads",
            "baseline_value": bare,
            "ratio": offloaded["rps"] / bare if bare else None,
            "target": "~1.0",
            "note": "the executor adds HTTP and scheduling, not contention",
        },
    ]


if __name__ == "__main__":
    for row in run(float(sys.argv[1]) if len(sys.argv) > 1 else 5.0):
        print(row)
