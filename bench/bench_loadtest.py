"""The load-test client against wrk (HTTP) and a C client (TCP), same targets, same run.

HTTP: a bare aiohttp app (one JSON route, uvloop, no access log) pinned to
core 0, driven by wrk (``-t1 -c64``) and ``service loadtest http -c 64``
(one worker) on core 1. The req/s check (target 0.9: a plain
``ClientSession`` loop reached ~0.7) is *interleaved*, as for TCP below:
both clients run at once, taking turns of SLICE seconds while the other is
SIGSTOPped, and each turn's answers are read off ``/proc/PID/io`` (all of the
bare app's answers have the same length); a wrk vs wrk row made the same way
is the method's noise floor. Latencies cannot come from such runs (a request
in flight at a stop waits out the other's turn), so separate runs follow:
several rounds of wrk, ours, wrk, each round's ratio ours over the geometric
mean of the wrk runs just before and after it. Rows: the median per-round
ratio of req/s and of p50/p90/p99, diagnostics without a target (rounds range
from about 0.6 to 1.1 on this machine, and wrk's own p99 moves by 12-55% from
one run to the next against a saturated server). wrk's ``--latency`` percentiles are
coordinated-omission corrected (``stats_correct`` in wrk's ``src/stats.c``:
each latency of twice the mean round trip or more adds synthetic samples
below it), so ours are compared *corrected the same way*
(``latency_ms_co_corrected``); the raw medians are in the note. A last row
is the noise floor: how far wrk's own p99 moves between the two runs of a
round (max/min), the yardstick for the p99 ratio: it is often above 1.2
here, so a single saturated round cannot hold p99 to 10%. The issue's check
("within 10% on the same steady target") is therefore also made where the
noise floor is small: a target answering every request after 10 ms (core 0)
driven by both clients *at once* (``-c 8`` each, unpinned), so they see the same
server and the same machine weather; two wrks side by side agree within 2-3%
there. Those rows are the median per-round ratio of three such rounds.

TCP: ``bench/loadtest_ref/pingclient.c`` (epoll, compiled here when a C
compiler exists) is the reference for ``service loadtest tcp --scenario
tcp-ping -c 32``, against the service's TCP core (``service serve``) on core
0. This machine's speed jumps by up to 2x between runs seconds apart (the
same client: 59,000 then 108,000 round trips/s), so separate runs cannot
tell 0.85 from 1.0: their single ratios range from about 0.6 to 1.4. The
check is therefore *interleaved*: both clients run on core 1 at once, one
SIGSTOPped while the other runs, in turns of SLICE seconds (C, ours, C, ...,
C), and each turn's round trips are read off ``/proc/PID/io`` (5 bytes per
PONG), the same meter for both. The row is the median over ours' turns of
its rate over the geometric mean of the C turns either side; ours' own
report must show no errors and at least the answers its turns read. A C
vs C row run the same way is the method's noise floor (it should be 1.0).
Then the way a user runs it, separate runs (C, ours, C, ..., C, each of ours
against the geometric mean of its neighbours), against the TCP core and a
bare uvloop ``Protocol`` PONG server: diagnostics without a target. Both
cores are nearly saturated with either client (the kernel's loopback path
is most of each side's CPU: about 0.3 of each core goes to softirq), and
ours spends about 2.5 us of user CPU per round trip against C's 0.4, so the
faster the server, the more the client's own cost shows.

Run it alone, on an otherwise idle machine: ``make bench BENCH_ARGS="--only loadtest"``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import free_port as _free_port
from bench.common import pin as _pin
from bench.common import stat_fields

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 5
TCP_RUNS = 12  # separate runs of ours against the TCP core (a diagnostic); bare PONG: 8
SLICE = 0.25  # seconds a client runs, in an interleaved comparison, while the other is stopped
# Of alternation per interleaved comparison (about 150 turns each). This VM has
# regimes of seconds in which the client's core is slower than the server's: one
# tcp-ping run held 0.75 of C for 3 s, and the thirds of 72 s runs were 0.86-1.01,
# against 0.97-1.05 for C vs C. Runs of 24 s gave 0.89-0.98, six of 72 s 0.90-0.95.
INTERLEAVED_SECONDS = 72
HTTP_CONNECTIONS = 64
TCP_CONNECTIONS = 32
UNITS_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}

BARE_HTTP = """
import sys, orjson, uvloop
from aiohttp import web

async def info(request):
    return web.Response(body=orjson.dumps({"name": "bare", "version": "0"}),
                        content_type="application/json")

app = web.Application()
app.router.add_get("/v1/info", info)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
            print=None, loop=uvloop.new_event_loop())
"""

STEADY_HTTP = """
import asyncio, sys, uvloop
from aiohttp import web

async def answer(request):
    await asyncio.sleep(0.01)
    return web.Response(body=b'{"ok":true}', content_type="application/json")

app = web.Application()
app.router.add_get("/{tail:.*}", answer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
            print=None, loop=uvloop.new_event_loop())
"""
STEADY_CONNECTIONS = 8
STEADY_ROUNDS = 3

BARE_PONG = """
import asyncio, sys, uvloop

class Pong(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(b"PONG\\n" * data.count(b"\\n"))

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Pong, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()

uvloop.run(main())
"""


@contextmanager
def _server(source: str | None, env: dict[str, str] | None = None) -> Iterator[int]:
    """``source`` (None: ``service serve``) as a server pinned to core 0; yields its port.

    The service gets its TCP port from the environment; its other listeners
    take any free port and it writes its events to a temporary file.
    """
    port = _free_port()
    tmp: str | None = None
    if source is None:
        cmd = [sys.executable, "-m", "service", "serve"]
        tmp = tempfile.mkdtemp(prefix="bench-loadtest-")
        env = {
            **os.environ,
            "SERVICE_HTTP__HOST": "127.0.0.1",
            "SERVICE_HTTP__PORT": "0",
            "SERVICE_TCP__HOST": "127.0.0.1",
            "SERVICE_TCP__PORT": str(port),
            "SERVICE_ADMIN__HOST": "127.0.0.1",
            "SERVICE_ADMIN__PORT": "0",
            "SERVICE_PIPELINE__SINK_PATH": str(Path(tmp) / "events.jsonl"),
            **(env or {}),
        }
    else:
        cmd = [sys.executable, "-c", source, str(port)]
    proc = subprocess.Popen([*_pin(0), *cmd], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("bench target did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _wrk_cmd(
    url: str, seconds: int, connections: int = HTTP_CONNECTIONS, pin: bool = True
) -> list[str]:
    return [
        *(_pin(1) if pin else []),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        url,
    ]


def _wrk(
    url: str, seconds: int, connections: int = HTTP_CONNECTIONS, pin: bool = True
) -> dict[str, float]:
    out = subprocess.run(
        _wrk_cmd(url, seconds, connections, pin),
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    return _parse_wrk(out)


def _parse_wrk(out: str) -> dict[str, float]:
    result = {
        f"p{m[1]}": float(m[2]) * UNITS_US[m[3]]
        for m in re.finditer(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None or len(result) != 3:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    result["rps"] = float(rps[1])
    return result


def _ours_cmd(args: list[str], seconds: int, pin: bool = True) -> list[str]:
    return [
        *(_pin(1) if pin else []),
        sys.executable,
        "-m",
        "service",
        "loadtest",
        *args,
        "-d",
        str(seconds),
        "--json",
        "-",
    ]


def _ours(args: list[str], seconds: int) -> dict[str, float]:
    out = subprocess.run(
        _ours_cmd(args, seconds),
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        cwd=ROOT,
    ).stdout
    return _parse_ours(out)


def _side_by_side(url: str, seconds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Ours and wrk at the same time against ``url`` (ours starts first: it boots slower).

    Not pinned: on one shared core each client's CPU bursts would show up as the
    other's latency (measured: wrk's p99 up by 10-15% next to ours on core 1).
    """
    ours = subprocess.Popen(
        _ours_cmd(["http", url, "-c", str(STEADY_CONNECTIONS)], seconds, pin=False),
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        time.sleep(0.3)
        wrk = _wrk(url, seconds, STEADY_CONNECTIONS, pin=False)
        out, _ = ours.communicate(timeout=seconds + 60)
    finally:
        if ours.poll() is None:
            ours.kill()
            ours.wait()
    if ours.returncode != 0:
        raise RuntimeError(f"service loadtest exited {ours.returncode}")
    return _parse_ours(out), wrk


def _parse_ours(out: str) -> dict[str, float]:
    report = json.loads(out)
    lat = report["latency_ms"]
    # wrk's --latency percentiles are coordinated-omission corrected (closed loop):
    # the like-for-like figures are ours corrected the same way; raw ones kept as raw_*.
    corrected = report["latency_ms_co_corrected"] or lat
    return {
        "rps": report["requests_per_second"],
        "errors": report["errors"],
        **{k: corrected[k] * 1000 for k in ("p50", "p90", "p99")},
        **{f"raw_{k}": lat[k] * 1000 for k in ("p50", "p90", "p99")},
    }


def _sandwich(
    ours: Any, theirs: Any
) -> tuple[list[dict[str, float]], list[dict[str, float]], list[dict[str, float]]]:
    """ROUNDS rounds of theirs, ours, theirs: ours and the baseline runs around it."""
    runs_ours, before, after = [], [], []
    for _ in range(ROUNDS):
        before.append(theirs())
        runs_ours.append(ours())
        after.append(theirs())
    return runs_ours, before, after


def _geomean(
    before: list[dict[str, float]], after: list[dict[str, float]]
) -> list[dict[str, float]]:
    """Per round, the geometric mean of each figure of the two baseline runs."""
    return [{k: (b[k] * a[k]) ** 0.5 for k in b} for b, a in zip(before, after, strict=True)]


def _chain(
    ours: Any, theirs: Any, rounds: int
) -> tuple[list[dict[str, float]], list[dict[str, float]], list[dict[str, float]]]:
    """theirs, ours, theirs, ours, ..., theirs: each run of ours between two baseline runs.

    Like :func:`_sandwich` with the baseline runs shared by neighbours: one
    more baseline run than ours instead of twice as many.
    """
    base = [theirs()]
    runs_ours = []
    for _ in range(rounds):
        runs_ours.append(ours())
        base.append(theirs())
    return runs_ours, base[:-1], base[1:]


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _ratios(ours: list[dict[str, float]], base: list[dict[str, float]], key: str) -> list[float]:
    """Per round (or turn), ours over the baseline's, where the baseline has a value."""
    return [o[key] / b[key] for o, b in zip(ours, base, strict=True) if b[key]]


def _row(
    name: str,
    ours: list[dict[str, float]],
    key: str,
    unit: str,
    baseline: str,
    base: list[dict[str, float]],
    target: str | None,
    note: str,
    each: str = "round",
) -> dict[str, Any]:
    """Medians of both sides; the ratio is the median of the per-round ratios.

    Each round's two runs are seconds apart, so their ratio cancels the slow
    drift of a shared machine that a ratio of overall medians would keep.
    """
    ratios = _ratios(ours, base, key)
    if len(ratios) > 8:
        q = sorted(ratios)
        spread = (
            f"per-{each} ratios from {q[0]:.2f} to {q[-1]:.2f}, quartiles "
            f"{q[len(q) // 4]:.2f}-{q[3 * len(q) // 4]:.2f}"
        )
    else:
        spread = f"per-{each} ratios " + " ".join(f"{r:.2f}" for r in ratios)
    return {
        "name": name,
        "value": _median(ours, key),
        "unit": unit,
        "baseline": baseline,
        "baseline_value": _median(base, key),
        "ratio": statistics.median(ratios) if ratios else None,
        "target": target,
        "note": f"{note}; {spread}",
    }


def http_rows(seconds: int) -> list[dict[str, Any]]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    with _server(BARE_HTTP) as port:
        url = f"http://127.0.0.1:{port}/v1/info"
        _wrk(url, 1)  # warm the server up
        # The check: interleaved turns, which cancel the machine's drift.
        answer = _response_bytes(url)
        wrk = _wrk_turns(url)
        interleaved = _interleaved_row(
            _ours_turns(["http", url, "-c", str(HTTP_CONNECTIONS)]),
            wrk,
            answer,
            "loadtest http vs wrk, interleaved (bare aiohttp, c64)",
            "req/s",
            ">= 0.90",
        )
        floor = _interleaved_row(
            wrk,
            wrk,
            answer,
            "wrk vs wrk, interleaved (the method's noise floor, bare aiohttp)",
            "req/s",
            None,
        )
        ours_runs, before, after = _sandwich(
            lambda: _ours(["http", url, "-c", str(HTTP_CONNECTIONS)], seconds),
            lambda: _wrk(url, seconds),
        )
    wrk_runs = _geomean(before, after)
    note = (
        f"{ROUNDS} rounds of wrk, ours, wrk ({seconds}s runs; baseline: geometric mean of "
        f"the two wrk runs), server core 0, clients core 1"
    )
    rows = [
        interleaved,
        floor,
        _row(
            "loadtest http vs wrk, separate runs (bare aiohttp, c64)",
            ours_runs,
            "rps",
            "req/s",
            "wrk",
            wrk_runs,
            None,
            note,
        ),
    ]
    for p in ("p50", "p90", "p99"):
        raw = f"raw (uncorrected) median {_median(ours_runs, f'raw_{p}'):,.0f} us"
        # No target: against a saturated server, wrk's own percentiles move from run to
        # run by more than 10% (the noise-floor row below); the check is on a
        # steady target, the side-by-side rows.
        rows.append(
            _row(
                f"loadtest http {p} latency vs wrk, saturated, separate runs (both "
                f"CO-corrected as wrk does)",
                ours_runs,
                p,
                "us",
                "wrk",
                wrk_runs,
                None,
                f"{note}; {raw}",
            )
        )
    spread = [
        max(b["p99"], a["p99"]) / min(b["p99"], a["p99"])
        for b, a in zip(before, after, strict=True)
    ]
    rows.append(
        {
            "name": "wrk p99 vs wrk p99, same round (noise floor)",
            "value": _median(before + after, "p99"),
            "unit": "us",
            "baseline": None,
            "baseline_value": None,
            "ratio": statistics.median(spread),
            "target": None,
            "note": "max/min of the two wrk runs of each round: "
            + " ".join(f"{r:.2f}" for r in spread),
        }
    )
    with _server(STEADY_HTTP) as port:
        url = f"http://127.0.0.1:{port}/"
        _wrk(url, 1, STEADY_CONNECTIONS)
        pairs = [_side_by_side(url, seconds) for _ in range(STEADY_ROUNDS)]
    ours_steady, wrk_steady = [o for o, _ in pairs], [w for _, w in pairs]
    note = (
        f"{STEADY_ROUNDS} rounds, both clients at once ({seconds}s, c{STEADY_CONNECTIONS} "
        f"each, not pinned) on a target answering after 10 ms (core 0)"
    )
    for p in ("p50", "p90", "p99"):
        rows.append(
            _row(
                f"loadtest http {p} vs wrk side by side, steady 10 ms target (CO-corrected as wrk)",
                ours_steady,
                p,
                "us",
                "wrk",
                wrk_steady,
                "0.90-1.10",
                note,
            )
        )
    return rows


def _c_client() -> Path | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    exe = Path(tempfile.gettempdir()) / f"loadtest-pingclient-{os.getuid()}"
    subprocess.run(
        [cc, "-O2", "-o", str(exe), str(ROOT / "bench/loadtest_ref/pingclient.c")], check=True
    )
    return exe


def _c_cmd(exe: Path, port: int, seconds: int) -> list[str]:
    return [*_pin(1), str(exe), "127.0.0.1", str(port), str(TCP_CONNECTIONS), str(seconds)]


def _c_ping(exe: Path, port: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        _c_cmd(exe, port, seconds), check=True, capture_output=True, text=True, timeout=seconds + 30
    ).stdout.split()
    return {"rps": int(out[0]) / float(out[1])}


def _io(pid: int, field: str) -> int:
    """A counter of Linux's ``/proc/PID/io``: ``rchar``, all bytes ``pid`` got from
    read-like syscalls, or ``wchar``, all it handed to write-like ones."""
    return int(re.search(rf"^{field}: (\d+)", Path(f"/proc/{pid}/io").read_text(), re.M)[1])  # type: ignore[index]


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGSTOP ``proc`` and wait until the kernel has stopped it."""
    proc.send_signal(signal.SIGSTOP)
    while stat_fields(proc.pid)[0] not in ("T", "t"):
        time.sleep(0.0005)


@dataclass
class _Turns:
    """A client for :func:`_interleaved`: its command, given its run's length in seconds,
    and a check of its own report (stdout) against the answers its turns read,
    which returns its own count (None: it reports none)."""

    name: str
    cmd: Callable[[int], list[str]]
    check: Callable[[str, int], int | None]


def _check_ours(out: str, seen: int) -> int:
    report = json.loads(out)
    if report["errors"]:
        raise RuntimeError(f"service loadtest reported errors: {report['error_kinds']}")
    # Its window holds every turn: it cannot have counted fewer than the meter saw.
    if report["requests"] < seen:
        raise RuntimeError(
            f"service loadtest counted {report['requests']} answers, its turns alone read {seen}"
        )
    return int(report["requests"])


def _check_wrk(out: str, seen: int) -> int:
    done = re.search(r"^\s*(\d+) requests in", out, re.M)
    if done is None or int(done[1]) < seen or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk's run does not add up ({seen} answers read in turns):\n{out}")
    return int(done[1])


def _ours_turns(args: list[str]) -> _Turns:
    return _Turns("ours", lambda seconds: _ours_cmd(args, seconds), _check_ours)


def _c_turns(exe: Path, port: int) -> _Turns:
    return _Turns("C client", lambda seconds: _c_cmd(exe, port, seconds), lambda out, seen: None)


def _wrk_turns(url: str) -> _Turns:
    return _Turns("wrk", lambda seconds: _wrk_cmd(url, seconds), _check_wrk)


def _response_bytes(url: str) -> int:
    """The length of one whole answer of ``url`` (a bare app's answers are all alike)."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head = data.split(b"\r\n\r\n", 1)[0]
        length = int(re.search(rb"(?im)^content-length: *(\d+)", head)[1])  # type: ignore[index]
        return len(head) + 4 + length


def _interleaved(
    first: _Turns, second: _Turns, answer_bytes: int, seconds: float
) -> tuple[list[float], list[float], list[int | None]]:
    """Two clients on core 1 at once, taking turns of SLICE seconds; one meter for both.

    Both are started (and left to reach their steady state), then only one
    runs at a time while the other is SIGSTOPped: second, first, second, ...,
    second. A turn's rate is the answers the running client read (bytes read,
    from ``/proc/PID/io``, over ``answer_bytes``) over its length. Returns the
    first client's turn rates, the second's, and their own counts (each
    report is checked against what its turns read). Latencies of such runs
    are meaningless (a request in flight at a stop waits out the other's
    turn), so only rates are taken.
    """
    total = int(seconds) + 6  # each client's own run; the alternation ends a second before
    procs: list[subprocess.Popen[str]] = []
    end = time.monotonic() + total - 1
    try:
        for client in (first, second):
            proc = subprocess.Popen(client.cmd(total), stdout=subprocess.PIPE, text=True, cwd=ROOT)
            procs.append(proc)
            deadline = time.monotonic() + 30
            while _io(proc.pid, "wchar") < 50_000:  # booted, connected and sending
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{client.name} did not start")
                time.sleep(0.05)
            _stop(proc)
        rates: tuple[list[float], list[float]] = ([], [])
        answers = [0, 0]

        def turn(i: int) -> None:
            proc = procs[i]
            got, t0 = _io(proc.pid, "rchar"), time.monotonic()
            proc.send_signal(signal.SIGCONT)
            time.sleep(SLICE)
            _stop(proc)
            n = (_io(proc.pid, "rchar") - got) // answer_bytes
            rates[i].append(n / (time.monotonic() - t0))
            answers[i] += n

        turn(1)
        while time.monotonic() + 3 * SLICE < end:
            turn(0)
            turn(1)
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
        outs = [proc.communicate(timeout=total + 60)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    own = []
    for client, proc, out, seen in zip((first, second), procs, outs, answers, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"{client.name} exited {proc.returncode}")
        own.append(client.check(out, seen))
    return rates[0], rates[1], own


def _interleaved_row(
    first: _Turns, second: _Turns, answer_bytes: int, name: str, unit: str, target: str | None
) -> dict[str, Any]:
    ours, theirs, own = _interleaved(first, second, answer_bytes, INTERLEAVED_SECONDS)
    counts = "; ".join(
        f"{c.name} reported {n:,} answers and no errors"
        for c, n in zip((first, second), own, strict=True)
        if n is not None
    )
    mine = [{"rps": r} for r in ours]
    around = _geomean([{"rps": r} for r in theirs[:-1]], [{"rps": r} for r in theirs[1:]])
    ratios = _ratios(mine, around, "rps")
    third = len(ratios) // 3
    thirds = (
        " ".join(f"{statistics.median(ratios[i * third : (i + 1) * third]):.2f}" for i in range(3))
        if third
        else "-"
    )
    return _row(
        name,
        mine,
        "rps",
        unit,
        second.name,
        around,
        target,
        f"{len(ours)} turns of {SLICE}s each, both clients running on core 1 and one "
        f"SIGSTOPped while the other runs; answers counted for both from /proc/PID/io "
        f"({answer_bytes} bytes each); ratio: the median over the turns of "
        f"{first.name} of its rate over the geometric mean of the {second.name} turns "
        f"either side (medians of the run's thirds: {thirds})"
        + (
            f"; {counts} (more than their turns read: they also ran before and after the turns)"
            if counts
            else ""
        ),
        "turn",
    )


def tcp_rows(seconds: int, runs: int = TCP_RUNS) -> list[dict[str, Any]]:
    exe = _c_client()
    rows = []
    with _server(None) as port:
        if exe is not None:
            # The check: interleaved turns, which cancel the machine's drift.
            ping = _ours_turns(
                ["tcp", f"127.0.0.1:{port}", "-s", "tcp-ping", "-c", str(TCP_CONNECTIONS)]
            )
            c = _c_turns(exe, port)
            rows.append(
                _interleaved_row(
                    ping,
                    c,
                    len(b"PONG\n"),
                    "loadtest tcp-ping vs C epoll client, interleaved "
                    "(the service's TCP core, c32)",
                    "rt/s",
                    ">= 0.90",
                )
            )
            rows.append(
                _interleaved_row(
                    c,
                    c,
                    len(b"PONG\n"),
                    "C client vs C client, interleaved (the method's noise floor, TCP core)",
                    "rt/s",
                    None,
                )
            )
    # Separate runs as a user makes them: the drift between runs shows in each ratio.
    for label, source, n in (
        ("the service's TCP core", None, runs),
        ("bare uvloop PONG", BARE_PONG, max(1, 2 * runs // 3)),
    ):
        with _server(source) as port:
            ours = lambda: _ours(  # noqa: E731
                [
                    "tcp",
                    f"127.0.0.1:{port}",
                    "-s",
                    "tcp-ping",
                    "-c",
                    str(TCP_CONNECTIONS),
                ],
                seconds,
            )
            if exe is None:
                alone = [ours() for _ in range(n)]
                rows.append(
                    {
                        "name": f"loadtest tcp-ping ({label}, c32)",
                        "value": _median(alone, "rps"),
                        "unit": "rt/s",
                        "baseline": None,
                        "baseline_value": None,
                        "ratio": None,
                        "target": None,
                        "note": "no C compiler: no reference client",
                    }
                )
                continue
            ours_runs, before, after = _chain(ours, lambda: _c_ping(exe, port, seconds), n)
            c_runs = _geomean(before, after)
        rows.append(
            _row(
                f"loadtest tcp-ping vs C epoll client, separate runs ({label}, c32)",
                ours_runs,
                "rps",
                "rt/s",
                "C client",
                c_runs,
                None,
                f"{n} runs of {seconds}s, each between two C runs (baseline: their "
                f"geometric mean); ratio: the median of the {n} runs' ratios",
            )
        )
    return rows


def run(duration: float) -> list[dict[str, Any]]:
    seconds = max(2, round(duration / 3))
    # TCP: many short runs (the Python client boots in ~0.5 s, the C one at once).
    return http_rows(seconds) + tcp_rows(max(2, round(duration / 5)))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from bench.run import table

    print(table(run(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)))
