"""HTTP overhead: ``GET /v1/info`` through the full stack against a bare aiohttp app.

The service runs as ``python -m service serve`` on its defaults (uvloop,
request id, metrics, access log on at its default, written to a file), once
on the fast path (aiohttp's private request fields, ``http.fast_path``) and
once on the public API only; the baseline is a bare aiohttp app with one
JSON route on the same aiohttp and uvloop, with no access log. Each server
is pinned to core 0, wrk to core 1 (``-t1 -c64``), and the runs alternate in
rounds (bare, fast, public, then the order rotates). Each row reports the
median of the per-round ratios: on this VM the speed drifts by 20-40% over
seconds, so runs a second apart compare far better than the medians of runs
far apart. Targets: the fast path at least 0.90 of bare aiohttp, the public
API at least 0.85.

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
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds as _cpu_seconds
from bench.common import free_port as _free_port
from bench.common import pin as _pin
from bench.common import pinned_server, wait_http

ROOT = Path(__file__).resolve().parent.parent
PAIRS = 16  # measured rounds (bare, fast, public), rotating which goes first
CONNECTIONS = 64
SIDES = ["bare", "fast", "public"]

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
def _server(
    cmd: list[str], url: str, env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
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


def measure(
    duration: float, pairs: int = PAIRS, service_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Rotating wrk runs of ``duration`` against bare aiohttp and both service paths."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    env = {**os.environ, "PYTHONUNBUFFERED": "0"}
    ports = {side: _free_port() for side in SIDES}
    urls = {side: f"http://127.0.0.1:{port}/v1/info" for side, port in ports.items()}
    rps: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu: dict[str, list[float]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp, ExitStack() as stack:
        procs = {
            "bare": stack.enter_context(
                _server(
                    [sys.executable, "-c", BARE_APP, str(ports["bare"])],
                    urls["bare"],
                    env,
                    Path(tmp) / "bare.log",
                )
            )
        }
        for side, fast in (("fast", "true"), ("public", "false")):
            svc_env = {
                **env,
                "SERVICE_HTTP__HOST": "127.0.0.1",
                "SERVICE_HTTP__PORT": str(ports[side]),
                "SERVICE_HTTP__FAST_PATH": fast,
                "SERVICE_TCP__HOST": "127.0.0.1",
                "SERVICE_TCP__PORT": "0",
                "SERVICE_ADMIN__HOST": "127.0.0.1",
                "SERVICE_ADMIN__PORT": "0",
                "SERVICE_LOG__FORMAT": "json",
                "SERVICE_PIPELINE__SINK_PATH": str(Path(tmp) / f"{side}-events.jsonl"),
                **(service_env or {}),
            }
            procs[side] = stack.enter_context(
                _server(
                    [sys.executable, "-m", "service", "serve"],
                    urls[side],
                    svc_env,
                    Path(tmp) / f"{side}.log",
                )
            )
        for side in SIDES:  # warm up (imports, first-request caches, CPU frequency)
            wrk(urls[side], 1)
        for i in range(pairs):
            # The order rotates too: the speed drifts within a round as well, and
            # a fixed order would hand it to one side.
            for side in SIDES[i % 3 :] + SIDES[: i % 3]:
                r, c = _run(urls[side], procs[side].pid, duration)
                rps[side].append(r)
                cpu[side].append(c)
        access_lines = sum(1 for _ in (Path(tmp) / "fast.log").open("rb"))
    out: dict[str, Any] = {"service_log_lines": access_lines}
    for side in SIDES:
        out[side] = rps[side]
        out[f"{side}_median"] = statistics.median(rps[side])
        out[f"{side}_cpu_us"] = statistics.median(cpu[side])
    for side in ("fast", "public"):
        out[f"{side}_ratio"] = statistics.median(
            s / b for s, b in zip(rps[side], rps["bare"], strict=True)
        )
        # CPU per request is less sensitive to other load on the machine than
        # throughput; its inverse ratio is what throughput would be alone.
        out[f"{side}_cpu_ratio"] = statistics.median(
            b / s for s, b in zip(cpu[side], cpu["bare"], strict=True)
        )
    return out


def run(duration: float) -> list[dict[str, Any]]:
    # Many short rounds rather than a few long runs: the same wrk time, and each
    # ratio taken between runs a second or two apart.
    m = measure(max(1.0, round(duration / 5)))
    rows = []
    for side, label, target in (
        ("fast", "fast path", ">= 0.90"),
        ("public", "public aiohttp API only", ">= 0.85"),
    ):
        ratios = sorted(s / b for s, b in zip(m[side], m["bare"], strict=True))
        rows.append(
            {
                "name": f"HTTP GET /v1/info, full stack, {label} (wrk -t1 -c64, 1 core each)",
                "value": m[f"{side}_median"],
                "unit": "req/s",
                "baseline": "bare aiohttp JSON route",
                "baseline_value": m["bare_median"],
                "ratio": m[f"{side}_ratio"],
                "target": target,
                "note": f"median of {len(ratios)} rotating rounds' ratios (lowest {ratios[0]:.2f}, "
                f"quartiles {ratios[len(ratios) // 4]:.2f}-"
                f"{ratios[3 * len(ratios) // 4]:.2f}, highest {ratios[-1]:.2f}); server "
                f"CPU per request {m['bare_cpu_us']:.1f} us bare vs "
                f"{m[f'{side}_cpu_us']:.1f} us (pairwise ratio {m[f'{side}_cpu_ratio']:.2f})"
                + (
                    f"; the service wrote {m['service_log_lines']:,} log lines"
                    if side == "fast"
                    else ""
                ),
            }
        )
    return rows


if __name__ == "__main__":
    import json

    # python -m bench.bench_http [RUN_SECONDS [PAIRS [SERVICE_X=Y ...]]]: for profiling by hand.
    args = sys.argv[1:]
    extra = dict(a.split("=", 1) for a in args[2:])
    print(
        json.dumps(
            measure(
                float(args[0]) if args else 2.0, int(args[1]) if len(args) > 1 else PAIRS, extra
            ),
            indent=2,
        )
    )
