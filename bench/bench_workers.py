"""Workers: ``service serve --workers 2`` against ``--workers 1``, on the whole machine.

Both services run side by side on their defaults (uvloop, access log on at
its default, written to a file), unpinned: the workers and the load
generator share every core, as they would on a real host. HTTP load is
``GET /v1/info`` from wrk (``-t1 -c64``); TCP load is ``PING`` from the C
client in ``bench/loadtest_ref`` on 64 connections, as round trips (one line
in flight per connection) and pipelined (:data:`DEPTH` lines in flight). The
sides alternate in rounds (one, two, then two, one...) so drift on the
shared machine hits both, and each row is the median of the per-round
ratios. CPU per answer is the CPU time of every process of a side (the
supervisor and its workers) over the answers in that round.

Targets on a 2-core machine: throughput with 2 workers at least 1.4 times
one worker's, CPU per answer at most 1.1 times, for HTTP and pipelined PING.
The load generator takes its share of the two cores, so 2.0 is out of reach.
PING round trips have no target: the kernel charges the client about as much
CPU per loopback round trip (a write and a read, ~6.4 us measured) as the
service spends answering it (~6.5 us), so on two cores one worker and the
client already use what there is, and a second worker only adds context
switches. With lines pipelined the service's work dominates again.

Run it alone, on an otherwise idle machine: ``make bench BENCH_ARGS="--only workers"``.
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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.bench_tcp import CLIENT as PY_PING_CLIENT
from bench.common import cpu_seconds, free_port, loopback_env, wait_http, wait_pong
from tests.support.process import stop_process

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 6
CONNECTIONS = 64
DEPTH = 64  # PINGs in flight per connection, pipelined
SIDES = {"one": 1, "two": 2}


def _wrk(url: str, seconds: int) -> int:
    """Requests wrk got from ``url`` in ``seconds`` (unpinned)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    if errors:
        raise RuntimeError(f"{errors.group(1)} error responses:\n{out}")
    match = re.search(r"(\d+) requests in", out)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return int(match.group(1))


def _ping_client() -> Callable[[int, int, int], int] | None:
    """Answers in ``seconds`` from ``port`` with ``depth`` PINGs in flight per connection.

    The C client; None without a C compiler.
    """
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    exe = Path(tempfile.gettempdir()) / f"bench-workers-pingclient-{os.getuid()}"
    src = ROOT / "bench/loadtest_ref/pingclient.c"
    subprocess.run([cc, "-O2", "-o", str(exe), str(src)], check=True)

    def ping(port: int, seconds: int, depth: int) -> int:
        args = ["127.0.0.1", str(port), str(CONNECTIONS), str(seconds), str(depth)]
        out = subprocess.run(
            [str(exe), *args], capture_output=True, text=True, check=True, timeout=seconds + 30
        ).stdout.split()
        return int(out[0])

    return ping


def _python_ping(port: int, seconds: int, depth: int) -> int:
    """Round trips in ``seconds`` from bench_tcp's Python client (no pipelining)."""
    args = ["127.0.0.1", str(port), str(CONNECTIONS), "0.2", str(seconds)]
    out = subprocess.run(
        [sys.executable, "-c", PY_PING_CLIENT, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    return int(json.loads(out)["round_trips"])


def _pids(proc: subprocess.Popen[bytes], admin_port: int | None) -> list[int]:
    """The service's processes: the supervisor and its workers (from ``/workers``)."""
    if admin_port is None:
        return [proc.pid]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/workers", timeout=5) as resp:
        return [proc.pid, *(w["pid"] for w in json.load(resp))]


@contextmanager
def _service(
    workers: int, ports: dict[str, int], env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    env = {**env, **loopback_env(ports, log_path.with_suffix(".jsonl"))}
    cmd = [sys.executable, "-m", "service", "serve", "--workers", str(workers)]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_http(f"http://127.0.0.1:{ports['http']}/readyz", proc)
            wait_pong(ports["tcp"], proc)
            yield proc
        finally:
            stop_process(proc, 30)


def measure(seconds: int = 2, rounds: int = ROUNDS) -> dict[str, Any]:
    """Rotating rounds of wrk and the ping client against 1 and 2 workers."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    c_ping = _ping_client()
    ping = c_ping or _python_ping
    loads: dict[str, Callable[[dict[str, int]], int]] = {
        "http": lambda p: _wrk(f"http://127.0.0.1:{p['http']}/v1/info", seconds),
        "tcp": lambda p: ping(p["tcp"], seconds, 1),
    }
    if c_ping is not None:
        loads["pipelined"] = lambda p: c_ping(p["tcp"], seconds, DEPTH)
    env = {**os.environ, "PYTHONUNBUFFERED": "0"}
    ports = {side: {n: free_port() for n in ("http", "tcp", "admin")} for side in SIDES}
    runs: dict[str, list[float]] = {
        f"{side}_{what}{cpu}": [] for side in SIDES for what in loads for cpu in ("", "_cpu")
    }
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp, ExitStack() as stack:
        procs = {
            side: stack.enter_context(_service(n, ports[side], env, Path(tmp) / f"{side}.log"))
            for side, n in SIDES.items()
        }
        pids = {
            side: _pids(procs[side], ports[side]["admin"] if n > 1 else None)
            for side, n in SIDES.items()
        }
        if len(pids["two"]) != 3:
            raise RuntimeError(f"expected a supervisor and 2 workers, got pids {pids['two']}")
        for side in SIDES:  # warm up
            _wrk(f"http://127.0.0.1:{ports[side]['http']}/v1/info", 1)
            ping(ports[side]["tcp"], 1, 1)
        order = list(SIDES)
        for i in range(rounds):
            for side in order if i % 2 == 0 else order[::-1]:
                for what, load in loads.items():
                    before = sum(cpu_seconds(pid) for pid in pids[side])
                    answers = load(ports[side])
                    cpu = sum(cpu_seconds(pid) for pid in pids[side]) - before
                    runs[f"{side}_{what}"].append(answers / seconds)
                    runs[f"{side}_{what}_cpu"].append(cpu / max(answers, 1) * 1e6)
    out: dict[str, Any] = dict(runs)
    for what in loads:
        for cpu in ("", "_cpu"):
            one, two = runs[f"one_{what}{cpu}"], runs[f"two_{what}{cpu}"]
            out[f"{what}{cpu}_ratios"] = sorted(t / o for t, o in zip(two, one, strict=True))
    return out


def _spread(ratios: list[float]) -> str:
    return f"lowest {ratios[0]:.2f}, highest {ratios[-1]:.2f}"


ROWS = (
    ("http", "HTTP GET /v1/info (wrk -t1 -c64)", "req/s", ">= 1.4", "<= 1.1"),
    (
        "pipelined",
        f"TCP PING, {DEPTH} in flight on each of 64 connections",
        "PONG/s",
        ">= 1.4",
        "<= 1.1",
    ),
    ("tcp", "TCP PING round trips (64 connections)", "round trips/s", None, None),
)


def run(duration: float) -> list[dict[str, Any]]:
    seconds = max(1, round(duration / 5))
    m = measure(seconds)
    rows = []
    for what, label, unit, target, cpu_target in ROWS:
        if f"{what}_ratios" not in m:
            continue  # pipelined PING needs the C client
        ratios, cpu_ratios = m[f"{what}_ratios"], m[f"{what}_cpu_ratios"]
        why = "" if target else "; no target: the client's CPU per round trip is the service's"
        rows.append(
            {
                "name": f"{label}, --workers 2, whole machine",
                "value": statistics.median(m[f"two_{what}"]),
                "unit": unit,
                "baseline": "--workers 1",
                "baseline_value": statistics.median(m[f"one_{what}"]),
                "ratio": statistics.median(ratios),
                "target": target,
                "note": f"median of {len(ratios)} alternating rounds' ratios ({_spread(ratios)}); "
                f"server and load generator unpinned{why}",
            }
        )
        scale, cpu_unit = (1000, "ns") if what == "pipelined" else (1, "us")
        rows.append(
            {
                "name": f"{label}, --workers 2: CPU per answer",
                "value": statistics.median(m[f"two_{what}_cpu"]) * scale,
                "unit": cpu_unit,
                "baseline": "--workers 1",
                "baseline_value": statistics.median(m[f"one_{what}_cpu"]) * scale,
                "ratio": statistics.median(cpu_ratios),
                "target": cpu_target,
                "note": "CPU time of the supervisor and every worker over the answers, "
                f"median of {len(cpu_ratios)} rounds' ratios ({_spread(cpu_ratios)})",
            }
        )
    return rows


if __name__ == "__main__":
    # python -m bench.bench_workers [SECONDS [ROUNDS]]: by hand.
    args = sys.argv[1:]
    result = measure(int(args[0]) if args else 2, int(args[1]) if len(args) > 1 else ROUNDS)
    print(json.dumps(result, indent=2))
