"""Workers: ``service serve --workers 2`` against ``--workers 1``, on the whole machine.

Both services run side by side on their defaults (uvloop, access log on at
its default, written to a file), unpinned: the workers and the load
generator share every core, as they would on a real host. HTTP load is
``GET /v1/info`` from wrk (``-t1 -c64``); TCP load is ``PING`` round trips
from the C client in ``bench/loadtest_ref`` (64 connections, one line in
flight each; the Python client of bench_tcp when there is no C compiler).
The sides alternate in rounds (one, two, then two, one...) so drift on the
shared machine hits both, and each row is the median of the per-round
ratios. CPU per request is the CPU time of every process of a side (the
supervisor and its workers) over the answers in that round.

Targets on a 2-core machine: throughput with 2 workers at least 1.4 times
one worker's, for HTTP and for TCP; CPU per request at most 1.1 times.
The load generator takes its share of the two cores, so 2.0 is out of reach.

Run it alone: ``flock /tmp/cpu-heavy.lock make bench BENCH_ARGS="--only workers"``.
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
from bench.common import cpu_seconds, free_port, wait_http, wait_pong
from tests.support.process import stop_process

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 6
CONNECTIONS = 64
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


def _ping_client() -> Callable[[int, int], int]:
    """Round trips in ``seconds`` against ``port``: the C client, or the Python one."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:

        def python_ping(port: int, seconds: int) -> int:
            args = ["127.0.0.1", str(port), str(CONNECTIONS), "0.2", str(seconds)]
            out = subprocess.run(
                [sys.executable, "-c", PY_PING_CLIENT, *args],
                capture_output=True,
                text=True,
                check=True,
                timeout=seconds + 30,
            ).stdout
            return int(json.loads(out)["round_trips"])

        return python_ping
    exe = Path(tempfile.gettempdir()) / f"bench-workers-pingclient-{os.getuid()}"
    subprocess.run([cc, "-O2", "-o", str(exe), str(ROOT / "bench/loadtest_ref/pingclient.c")])

    def c_ping(port: int, seconds: int) -> int:
        args = ["127.0.0.1", str(port), str(CONNECTIONS), str(seconds)]
        out = subprocess.run(
            [str(exe), *args], capture_output=True, text=True, check=True, timeout=seconds + 30
        ).stdout.split()
        return int(out[0])

    return c_ping


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
    env = {
        **env,
        "SERVICE_HTTP__HOST": "127.0.0.1",
        "SERVICE_HTTP__PORT": str(ports["http"]),
        "SERVICE_TCP__HOST": "127.0.0.1",
        "SERVICE_TCP__PORT": str(ports["tcp"]),
        "SERVICE_ADMIN__HOST": "127.0.0.1",
        "SERVICE_ADMIN__PORT": str(ports["admin"]),
        "SERVICE_LOG__FORMAT": "json",
        "SERVICE_PIPELINE__SINK_PATH": str(log_path.with_suffix(".jsonl")),
    }
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
    ping = _ping_client()
    env = {**os.environ, "PYTHONUNBUFFERED": "0"}
    ports = {side: {n: free_port() for n in ("http", "tcp", "admin")} for side in SIDES}
    runs: dict[str, list[float]] = {
        f"{side}_{what}": [] for side in SIDES for what in ("http", "http_cpu", "tcp", "tcp_cpu")
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
            ping(ports[side]["tcp"], 1)
        order = list(SIDES)
        for i in range(rounds):
            for side in order if i % 2 == 0 else order[::-1]:
                for what, load in (
                    ("http", lambda p: _wrk(f"http://127.0.0.1:{p['http']}/v1/info", seconds)),
                    ("tcp", lambda p: ping(p["tcp"], seconds)),
                ):
                    before = sum(cpu_seconds(pid) for pid in pids[side])
                    answers = load(ports[side])
                    cpu = sum(cpu_seconds(pid) for pid in pids[side]) - before
                    runs[f"{side}_{what}"].append(answers / seconds)
                    runs[f"{side}_{what}_cpu"].append(cpu / max(answers, 1) * 1e6)
    out: dict[str, Any] = dict(runs)
    for what in ("http", "tcp"):
        one, two = runs[f"one_{what}"], runs[f"two_{what}"]
        out[f"{what}_ratios"] = sorted(t / o for t, o in zip(two, one, strict=True))
        cpu_one, cpu_two = runs[f"one_{what}_cpu"], runs[f"two_{what}_cpu"]
        out[f"{what}_cpu_ratios"] = sorted(t / o for t, o in zip(cpu_two, cpu_one, strict=True))
    return out


def _spread(ratios: list[float]) -> str:
    return f"lowest {ratios[0]:.2f}, highest {ratios[-1]:.2f}"


def run(duration: float) -> list[dict[str, Any]]:
    seconds = max(1, round(duration / 5))
    m = measure(seconds)
    rows = []
    for what, label, unit in (
        ("http", "HTTP GET /v1/info (wrk -t1 -c64)", "req/s"),
        ("tcp", "TCP PING round trips (64 connections)", "round trips/s"),
    ):
        ratios, cpu_ratios = m[f"{what}_ratios"], m[f"{what}_cpu_ratios"]
        one, two = m[f"one_{what}"], m[f"two_{what}"]
        cpu_one, cpu_two = m[f"one_{what}_cpu"], m[f"two_{what}_cpu"]
        rows.append(
            {
                "name": f"{label}, --workers 2, whole machine",
                "value": statistics.median(two),
                "unit": unit,
                "baseline": "--workers 1",
                "baseline_value": statistics.median(one),
                "ratio": statistics.median(ratios),
                "target": ">= 1.4",
                "note": f"median of {len(ratios)} alternating rounds' ratios ({_spread(ratios)}); "
                "server and load generator unpinned",
            }
        )
        rows.append(
            {
                "name": f"{label}, --workers 2: CPU per answer",
                "value": statistics.median(cpu_two),
                "unit": "us",
                "baseline": "--workers 1",
                "baseline_value": statistics.median(cpu_one),
                "ratio": statistics.median(cpu_ratios),
                "target": "<= 1.1",
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
