"""HTTP overhead: ``GET /v1/info`` through the full stack against a bare aiohttp app.

The service runs as ``python -m service serve`` on its defaults (uvloop,
request id, metrics, access log on at its default, written to a file), once
on the fast path (aiohttp's private request fields, ``http.fast_path``) and
once on the public API only; the baseline is a bare aiohttp app with one
JSON route on the same aiohttp and uvloop, with no access log. Two more
service runs have tracing on (``SERVICE_TRACING__ENABLED=true``, fast path),
sampling every request and a tenth of them, exporting over OTLP/HTTP to a
sink that answers 200 to every export (pinned with wrk to core 1, so the
service's core pays only for making and exporting the spans). Each server
is pinned to core 0, wrk to core 1 (``-t1 -c64``), and the runs alternate in
rounds (bare, fast, public, traced, sampled, then the order rotates). Each
row reports the median of the per-round ratios: on this VM the speed drifts
by 20-40% over seconds, so runs a second apart compare far better than the
medians of runs far apart. Targets: the fast path (tracing off) at least 0.90
of bare aiohttp, the public API at least 0.85; tracing on at least 0.5 of
tracing off with every request sampled, 0.8 with a tenth.

Run it alone, on an otherwise idle machine: ``make bench BENCH_ARGS="--only http"``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds as _cpu_seconds
from bench.common import free_port as _free_port
from bench.common import pin as _pin
from bench.common import pinned_server, wait_http

ROOT = Path(__file__).resolve().parent.parent
PAIRS = 16  # measured rounds (every side once), rotating which goes first
CONNECTIONS = 64
SIDES = ["bare", "fast", "public", "traced", "sampled"]
# The service's runs: (side, fast path, OTEL_TRACES_SAMPLER_ARG or None for tracing off).
SERVICE_SIDES = [
    ("fast", "true", None),
    ("public", "false", None),
    ("traced", "true", "1.0"),
    ("sampled", "true", "0.1"),
]

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

# The traced runs' collector: takes every OTLP/HTTP export and answers an empty
# ExportTraceServiceResponse (an empty protobuf message is zero bytes); counts them.
OTLP_SINK = """
import sys, uvloop
from aiohttp import web

received = {"exports": 0, "bytes": 0}

async def traces(request):
    received["exports"] += 1
    received["bytes"] += len(await request.read())
    return web.Response(body=b"", content_type="application/x-protobuf")

async def stats(request):
    return web.json_response(received)

app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/v1/traces", traces)
app.router.add_get("/stats", stats)
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


# What each row compares with: bare aiohttp for the service, the service with
# tracing off for the traced runs.
BASELINES = {"fast": "bare", "public": "bare", "traced": "fast", "sampled": "fast"}
BASELINE_NAMES = {"bare": "bare aiohttp JSON route", "fast": "the service, tracing off"}


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
    sink_port = _free_port()
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
        sink = stack.enter_context(
            subprocess.Popen(
                [*_pin(1), sys.executable, "-c", OTLP_SINK, str(sink_port)],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        stack.callback(sink.terminate)
        wait_http(f"http://127.0.0.1:{sink_port}/stats", sink)
        for side, fast, ratio in SERVICE_SIDES:
            tracing = (
                {}
                if ratio is None
                else {
                    "SERVICE_TRACING__ENABLED": "true",
                    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                    "OTEL_TRACES_SAMPLER_ARG": ratio,
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
                }
            )
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
                **tracing,
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
            turn = i % len(SIDES)
            for side in SIDES[turn:] + SIDES[:turn]:
                r, c = _run(urls[side], procs[side].pid, duration)
                rps[side].append(r)
                cpu[side].append(c)
        access_lines = sum(1 for _ in (Path(tmp) / "fast.log").open("rb"))
        with urllib.request.urlopen(f"http://127.0.0.1:{sink_port}/stats", timeout=5) as resp:
            received = json.loads(resp.read())
    out: dict[str, Any] = {"service_log_lines": access_lines, "otlp": received}
    for side in SIDES:
        out[side] = rps[side]
        out[f"{side}_median"] = statistics.median(rps[side])
        out[f"{side}_cpu_us"] = statistics.median(cpu[side])
    for side, base in BASELINES.items():
        out[f"{side}_ratio"] = statistics.median(
            s / b for s, b in zip(rps[side], rps[base], strict=True)
        )
        # CPU per request is less sensitive to other load on the machine than
        # throughput; its inverse ratio is what throughput would be alone.
        out[f"{side}_cpu_ratio"] = statistics.median(
            b / s for s, b in zip(cpu[side], cpu[base], strict=True)
        )
    return out


def run(duration: float) -> list[dict[str, Any]]:
    # Many short rounds rather than a few long runs: the same wrk time, and each
    # ratio taken between runs a second or two apart.
    m = measure(max(1.0, round(duration / 5)))
    rows = []
    for side, label, target in (
        ("fast", "fast path, tracing off", ">= 0.90"),
        ("public", "public aiohttp API only", ">= 0.85"),
        ("traced", "tracing on, every request sampled", ">= 0.50"),
        ("sampled", "tracing on, 10% sampled", ">= 0.80"),
    ):
        base = BASELINES[side]
        ratios = sorted(s / b for s, b in zip(m[side], m[base], strict=True))
        notes = {
            "fast": f"; the service wrote {m['service_log_lines']:,} log lines",
            "traced": f"; the OTLP sink took {m['otlp']['exports']:,} exports "
            f"({m['otlp']['bytes'] / 1e6:,.0f} MB) from both traced runs",
        }
        rows.append(
            {
                "name": f"HTTP GET /v1/info, full stack, {label} (wrk -t1 -c64, 1 core each)",
                "value": m[f"{side}_median"],
                "unit": "req/s",
                "baseline": BASELINE_NAMES[base],
                "baseline_value": m[f"{base}_median"],
                "ratio": m[f"{side}_ratio"],
                "target": target,
                "note": f"median of {len(ratios)} rotating rounds' ratios (lowest {ratios[0]:.2f}, "
                f"quartiles {ratios[len(ratios) // 4]:.2f}-"
                f"{ratios[3 * len(ratios) // 4]:.2f}, highest {ratios[-1]:.2f}); server "
                f"CPU per request {m[f'{base}_cpu_us']:.1f} us {base} vs "
                f"{m[f'{side}_cpu_us']:.1f} us (pairwise ratio {m[f'{side}_cpu_ratio']:.2f})"
                + notes.get(side, ""),
            }
        )
    return rows


if __name__ == "__main__":
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
