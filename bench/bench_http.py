"""HTTP overhead: ``GET /v1/info`` through the full stack against a bare aiohttp app.

The service runs as ``python -m service serve`` on its defaults (uvloop,
request id, metrics, access log on at its default, written to a file); the
baseline is a bare aiohttp app with one JSON route on the same aiohttp and
uvloop, with no access log. Each server is pinned to core 0, wrk to core 1
(``-t1 -c64``), and the runs alternate (bare, service, service, bare, ...)
so a noisy neighbour hits both sides alike; the row reports the ratio of
the medians. Target: 0.8 (ISSUE 2, ../shared/PERF-NOTES.md).

Run it alone: ``flock /tmp/cpu-heavy.lock make bench BENCH_ARGS="--only http"``.
"""

from __future__ import annotations

import os
import re
import shutil
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
from bench.common import pinned_server, wait_http

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 6  # measured runs per side, alternating
CONNECTIONS = 64

# The baseline: the same aiohttp and uvloop, one JSON route, nothing else.
BARE_APP = """
import sys, time, orjson, uvloop
from aiohttp import web

started = time.monotonic()

async def info(request):
    return web.Response(body=orjson.dumps({"name": "bare", "version": "0",
                        "uptime_seconds": round(time.monotonic() - started, 3)}),
                        content_type="application/json")

app = web.Application()
app.router.add_get("/v1/info", info)
app.router.add_get("/livez", info)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
            print=None, loop=uvloop.new_event_loop())
"""


@contextmanager
def _server(cmd: list[str], url: str, env: dict[str, str],
            log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with pinned_server(cmd, lambda proc: wait_http(url, proc), env, log_path) as proc:
        yield proc


def wrk(url: str, duration: float, connections: int = CONNECTIONS) -> tuple[float, int]:
    """Requests per second and requests that wrk (one thread, on core 1) got from ``url``."""
    cmd = [*_pin(1), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 30)
    match = re.search(r"Requests/sec:\s*([\d.]+)", out.stdout)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{out.stdout}{out.stderr}")
    errors = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out.stdout)
    if errors:
        raise RuntimeError(f"{errors.group(1)} error responses:\n{out.stdout}")
    total = re.search(r"(\d+) requests in", out.stdout)
    return float(match.group(1)), int(total.group(1)) if total else 0


def _run(url: str, pid: int, duration: float) -> tuple[float, float]:
    """One wrk run: (requests/s, server CPU microseconds per request)."""
    before = _cpu_seconds(pid)
    rps, n = wrk(url, duration)
    return rps, (_cpu_seconds(pid) - before) / max(n, 1) * 1e6


def measure(duration: float, rounds: int = ROUNDS,
            service_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Alternate wrk runs against both servers; the medians and their ratio."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    bare_port, svc_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "0"}
    svc_env = {
        **env,
        "SERVICE_HTTP__HOST": "127.0.0.1", "SERVICE_HTTP__PORT": str(svc_port),
        "SERVICE_TCP__HOST": "127.0.0.1", "SERVICE_TCP__PORT": "0",
        "SERVICE_ADMIN__HOST": "127.0.0.1", "SERVICE_ADMIN__PORT": "0",
        "SERVICE_LOG__FORMAT": "json",
        **(service_env or {}),
    }
    bare_url = f"http://127.0.0.1:{bare_port}/v1/info"
    svc_url = f"http://127.0.0.1:{svc_port}/v1/info"
    bare: list[float] = []
    svc: list[float] = []
    bare_cpu: list[float] = []
    svc_cpu: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp, \
            _server([sys.executable, "-c", BARE_APP, str(bare_port)], bare_url, env,
                    Path(tmp) / "bare.log") as bare_proc, \
            _server([sys.executable, "-m", "service", "serve"], svc_url, svc_env,
                    Path(tmp) / "service.log") as svc_proc:
        # Warm both up (imports, first-request caches, CPU frequency).
        wrk(bare_url, 1)
        wrk(svc_url, 1)
        sides = [(bare_url, bare_proc.pid, bare, bare_cpu), (svc_url, svc_proc.pid, svc, svc_cpu)]
        for i in range(rounds):
            # Which side goes first alternates too: on this VM the speed drifts
            # within a round, and a fixed order would hand it to one side.
            for url, pid, out, cpu_out in (sides if i % 2 == 0 else sides[::-1]):
                rps, cpu = _run(url, pid, duration)
                out.append(rps)
                cpu_out.append(cpu)
        access_lines = sum(1 for _ in (Path(tmp) / "service.log").open("rb"))
    return {
        "bare": bare, "service": svc,
        "bare_median": statistics.median(bare), "service_median": statistics.median(svc),
        "ratio": statistics.median(svc) / statistics.median(bare),
        # CPU per request is far less sensitive to other load on the machine
        # than throughput; its inverse ratio is what throughput would be alone.
        "bare_cpu_us": statistics.median(bare_cpu), "service_cpu_us": statistics.median(svc_cpu),
        "cpu_ratio": statistics.median(bare_cpu) / statistics.median(svc_cpu),
        "service_log_lines": access_lines,
    }


def run(duration: float) -> list[dict[str, Any]]:
    # Six shorter runs per side rather than three long ones: the same wrk time,
    # and a median that one slow stretch of the VM cannot move.
    m = measure(duration / 2)
    runs = ", ".join(f"{b:,.0f}/{s:,.0f}" for b, s in zip(m["bare"], m["service"], strict=True))
    return [{
        "name": "HTTP GET /v1/info, full stack (wrk -t1 -c64, 1 core each)",
        "value": m["service_median"], "unit": "req/s",
        "baseline": "bare aiohttp JSON route", "baseline_value": m["bare_median"],
        "ratio": m["ratio"], "target": ">= 0.8",
        "note": f"median of {len(m['bare'])} alternating runs (bare/service: {runs}); "
                f"server CPU per request {m['bare_cpu_us']:.1f} us bare vs "
                f"{m['service_cpu_us']:.1f} us service (ratio {m['cpu_ratio']:.2f}); "
                f"service wrote {m['service_log_lines']:,} log lines",
    }]


if __name__ == "__main__":
    import json

    # python -m bench.bench_http [DURATION [ROUNDS [SERVICE_X=Y ...]]]: for profiling by hand.
    args = sys.argv[1:]
    extra = dict(a.split("=", 1) for a in args[2:])
    print(json.dumps(measure(float(args[0]) if args else 5.0,
                             int(args[1]) if len(args) > 1 else ROUNDS, extra), indent=2))
