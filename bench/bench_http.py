"""HTTP overhead: ``GET /v1/info`` through the full stack against a bare aiohttp app.

The service runs as ``python -m service serve`` on its defaults (uvloop,
request id, metrics, access log on at its default, written to a file); the
baseline is a bare aiohttp app with one JSON route on the same aiohttp and
uvloop, with no access log. Each server is pinned to core 0, wrk to core 1
(``-t1 -c64``), and the runs alternate in pairs (bare then service, then
service then bare, ...). The row reports the median of the per-pair ratios:
on this VM the speed drifts by 20-40% over seconds, so two runs a second
apart compare far better than the medians of runs far apart (with six 5 s
runs per side, two full runs of the same build gave 0.83 and 0.93). Target:
0.8 (ISSUE 2, ../shared/PERF-NOTES.md).

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
PAIRS = 16  # measured (bare, service) pairs, alternating which goes first
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


def measure(duration: float, pairs: int = PAIRS,
            service_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Alternate wrk runs of ``duration`` against both servers, ``pairs`` times; the ratios."""
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
        for i in range(pairs):
            # Which side goes first alternates too: the speed drifts within a
            # pair as well, and a fixed order would hand it to one side.
            for url, pid, out, cpu_out in (sides if i % 2 == 0 else sides[::-1]):
                rps, cpu = _run(url, pid, duration)
                out.append(rps)
                cpu_out.append(cpu)
        access_lines = sum(1 for _ in (Path(tmp) / "service.log").open("rb"))
    return {
        "bare": bare, "service": svc,
        "bare_median": statistics.median(bare), "service_median": statistics.median(svc),
        "ratio": statistics.median(s / b for s, b in zip(svc, bare, strict=True)),
        # CPU per request is less sensitive to other load on the machine than
        # throughput; its inverse ratio is what throughput would be alone.
        "bare_cpu_us": statistics.median(bare_cpu), "service_cpu_us": statistics.median(svc_cpu),
        "cpu_ratio": statistics.median(b / s for s, b in zip(svc_cpu, bare_cpu, strict=True)),
        "service_log_lines": access_lines,
    }


def run(duration: float) -> list[dict[str, Any]]:
    # Many short pairs rather than a few long runs: the same wrk time, and each
    # ratio taken between runs a second or two apart.
    m = measure(max(1.0, round(duration / 5)))
    ratios = sorted(s / b for s, b in zip(m["service"], m["bare"], strict=True))
    return [{
        "name": "HTTP GET /v1/info, full stack (wrk -t1 -c64, 1 core each)",
        "value": m["service_median"], "unit": "req/s",
        "baseline": "bare aiohttp JSON route", "baseline_value": m["bare_median"],
        "ratio": m["ratio"], "target": ">= 0.8",
        "note": f"median of {len(ratios)} alternating pairs' ratios (each pair's runs a "
                f"second apart; lowest {ratios[0]:.2f}, quartiles "
                f"{ratios[len(ratios) // 4]:.2f}-{ratios[3 * len(ratios) // 4]:.2f}, "
                f"highest {ratios[-1]:.2f}); server CPU per request {m['bare_cpu_us']:.1f} us "
                f"bare vs {m['service_cpu_us']:.1f} us service (pairwise ratio "
                f"{m['cpu_ratio']:.2f}); service wrote {m['service_log_lines']:,} log lines",
    }]


if __name__ == "__main__":
    import json

    # python -m bench.bench_http [RUN_SECONDS [PAIRS [SERVICE_X=Y ...]]]: for profiling by hand.
    args = sys.argv[1:]
    extra = dict(a.split("=", 1) for a in args[2:])
    print(json.dumps(measure(float(args[0]) if args else 2.0,
                             int(args[1]) if len(args) > 1 else PAIRS, extra), indent=2))
