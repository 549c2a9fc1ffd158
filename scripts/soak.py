"""``make soak``: hours of production in minutes, with the leaks and losses counted.

What it does, in order:

1. starts the two downstream stubs, a fault-injection proxy in front of each
   (``tests/faultproxy.py``: 1% of downstream requests reset, closed unanswered or
   delayed) and the service pointed at the proxies, each a real process;
2. measures the capacity of this machine for the mixed load (closed loop), then
   drives an open loop at ``--load`` (70%) of it for ``--duration`` seconds:
   ``POST /v1/events`` (JSON and NDJSON batches), events over TCP,
   ``GET /v1/users/{id}/summary``, ``POST /v1/hash``, ``GET /v1/info``;
3. samples RSS, open file descriptors and ``service_asyncio_tasks`` every
   ``--sample-interval`` seconds, and counts tasks and fds again at quiet points
   (load paused, in-flight work done) after the warm-up and at the end;
4. sends SIGTERM while the load still runs and checks that the service exits 0
   within its shutdown budget, that no connection was dropped mid-request and
   that every acknowledged event id (202 or ``OK <id>``) is in the sink file.

It fails (exit 1) when the RSS slope extrapolates to 1 MB or more per 10
minutes, when tasks or fds at the end are not within 5% of the start, on any
unexpected 5xx (a 500 anywhere; a 502/504 outside the summary route, whose
downstreams are the ones being broken on purpose), on a dropped connection or
on a lost event. ``--json FILE`` writes the figures for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RSS_LIMIT_BYTES_PER_10_MIN = 1_000_000
COUNT_TOLERANCE = 0.05
# Routes whose downstreams the soak breaks on purpose: their 502/503/504 are expected.
DOWNSTREAM_ROUTES = frozenset({"summary"})
# 503 is the documented answer of a full hash backlog and of a draining service.
BACKPRESSURE_5XX = frozenset({503})


# -- the verdict: pure functions (tests/test_soak.py checks them) ---------------------


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The least-squares slope of ys over xs (0 for fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def rss_growth_per_10_min(samples: Sequence[tuple[float, float]]) -> float:
    """RSS growth in bytes per 10 minutes, extrapolated from the fitted slope."""
    return slope([t for t, _ in samples], [v for _, v in samples]) * 600


def within(start: float, end: float, tolerance: float = COUNT_TOLERANCE) -> bool:
    """``end`` within ``tolerance`` (a fraction) of ``start``; at least one unit of slack."""
    return abs(end - start) <= max(tolerance * start, 1.0)


def unexpected_5xx(route: str, status: int, draining: bool) -> bool:
    if status < 500:
        return False
    if status == 500:
        return True  # never, whatever broke downstream
    if route in DOWNSTREAM_ROUTES:
        return status not in (502, 503, 504)
    return not (status in BACKPRESSURE_5XX and (draining or route == "hash"))


@dataclass
class Verdict:
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)


def judge(report: dict[str, Any]) -> Verdict:
    """Every acceptance criterion of the soak, from the figures of one run."""
    v = Verdict()
    growth = report["rss_growth_bytes_per_10_min"]
    v.check(
        growth < RSS_LIMIT_BYTES_PER_10_MIN,
        f"RSS grows {growth / 1e6:.2f} MB per 10 min (limit 1 MB)",
    )
    for name in ("tasks", "fds"):
        start, end = report[f"{name}_start"], report[f"{name}_end"]
        v.check(within(start, end), f"{name}: {start} at the start, {end} at the end (> 5%)")
    v.check(report["unexpected_5xx"] == 0, f"{report['unexpected_5xx']} unexpected 5xx")
    v.check(
        report["dropped_mid_request"] == 0,
        f"{report['dropped_mid_request']} connections dropped mid-request",
    )
    v.check(report["events_lost"] == 0, f"{report['events_lost']} acknowledged events lost")
    v.check(report["exit_code"] == 0, f"exit code {report['exit_code']}")
    v.check(
        report["shutdown_seconds"] <= report["shutdown_budget_seconds"],
        f"shutdown took {report['shutdown_seconds']:.1f}s "
        f"(budget {report['shutdown_budget_seconds']:.1f}s)",
    )
    v.check(report["acknowledged_events"] > 0, "no event was acknowledged: the load did not run")
    return v


# -- the load --------------------------------------------------------------------------


@dataclass
class Stats:
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    dropped: int = 0
    acked: set[str] = field(default_factory=set)


class Load:
    """An open-loop mixed load; every request is bounded in time and count."""

    TCP_POOL = 4
    MIX = (("events", 40), ("ndjson", 10), ("tcp", 15), ("summary", 15), ("hash", 5), ("info", 15))

    def __init__(self, http_url: str, tcp_port: int, concurrency: int = 64) -> None:
        import aiohttp

        self.aiohttp = aiohttp
        self.url = http_url
        self.tcp_port = tcp_port
        self.stats = Stats()
        self.draining = False
        self.rng = random.Random(7)
        self._sem = asyncio.Semaphore(concurrency)
        self._session: Any = None
        self._tcp: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._kinds = [k for k, w in self.MIX for _ in range(w)]

    def _new_session(self) -> Any:
        aiohttp = self.aiohttp
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), timeout=aiohttp.ClientTimeout(total=15)
        )

    async def reset_session(self) -> None:
        """Close every idle connection, so the service's fd count holds no client pool."""
        await self._session.close()
        self._session = self._new_session()
        self._close_tcp()

    async def __aenter__(self) -> Load:
        self._session = self._new_session()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.quiesce()
        await self._session.close()
        self._close_tcp()

    def _close_tcp(self) -> None:
        while not self._tcp.empty():
            _, writer = self._tcp.get_nowait()
            writer.close()

    async def quiesce(self) -> None:
        """Wait for every request in flight."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    def _spawn(self, open_loop: bool = True) -> bool:
        if self._sem.locked():
            if open_loop:  # the service fell behind the intended rate
                self.stats.errors["client_backlog"] += 1
            return False
        kind = self.rng.choice(self._kinds)
        task = asyncio.create_task(self._one(kind), name=f"soak-{kind}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def run_open(self, rate: float, seconds: float) -> None:
        """``rate`` requests per second for ``seconds`` (intended start times kept)."""
        start = time.monotonic()
        sent = 0
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate)
            while sent < due:
                self._spawn()
                sent += 1
            await asyncio.sleep(0.005)

    async def run_closed(self, seconds: float) -> float:
        """As fast as the concurrency allows; returns requests per second."""
        before = self.stats.requests
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            if not self._spawn(open_loop=False):
                await asyncio.sleep(0.001)
            else:
                await asyncio.sleep(0)
        await self.quiesce()
        return (self.stats.requests - before) / (time.monotonic() - start)

    async def _one(self, kind: str) -> None:
        async with self._sem:
            try:
                async with asyncio.timeout(20):  # no request outlives the run
                    if kind == "tcp":
                        await self._tcp_event()
                    else:
                        await self._http(kind)
            except (self.aiohttp.ClientConnectorError, ConnectionRefusedError):
                self.stats.errors["refused"] += 1  # after the listener closed: expected
            except (
                self.aiohttp.ServerDisconnectedError,
                self.aiohttp.ClientPayloadError,
                self.aiohttp.ClientOSError,
                ConnectionError,
                asyncio.IncompleteReadError,
            ) as exc:
                self.stats.dropped += 1
                self.stats.errors[f"dropped:{kind}:{type(exc).__name__}"] += 1
            except TimeoutError:
                self.stats.errors[f"timeout:{kind}"] += 1
            finally:
                self.stats.requests += 1

    def _event(self) -> dict[str, Any]:
        return {
            "user_id": f"u{self.rng.randint(1, 1000)}",
            "type": "soak",
            "payload": {"n": self.rng.randint(0, 10**6)},
            "ts": time.time(),
        }

    async def _http(self, kind: str) -> None:
        s = self._session
        if kind in ("events", "ndjson"):
            batch = [self._event() for _ in range(self.rng.randint(1, 5))]
            if kind == "events":
                call = s.post(f"{self.url}/v1/events", json=batch)
            else:
                body = "\n".join(json.dumps(e) for e in batch).encode()
                call = s.post(
                    f"{self.url}/v1/events",
                    data=body,
                    headers={"Content-Type": "application/x-ndjson"},
                )
            route = "events"
        elif kind == "summary":
            call = s.get(f"{self.url}/v1/users/u{self.rng.randint(1, 1100)}/summary")
            route = "summary"
        elif kind == "hash":
            call = s.post(f"{self.url}/v1/hash", json={"data": f"soak-{self.rng.random()}"})
            route = "hash"
        else:
            call = s.get(f"{self.url}/v1/info")
            route = "info"
        async with call as resp:
            body = await resp.read()
        self.stats.statuses[f"{route}:{resp.status}"] += 1
        if resp.status == 202:
            self.stats.acked.update(json.loads(body)["ids"])
        if unexpected_5xx(route, resp.status, self.draining):
            self.stats.unexpected.append(f"{route} {resp.status} {body[:200]!r}")

    async def _tcp_event(self) -> None:
        try:
            reader, writer = self._tcp.get_nowait()
        except asyncio.QueueEmpty:
            # Refused once the listener has closed: counted as such, not as a drop.
            reader, writer = await asyncio.open_connection("127.0.0.1", self.tcp_port)
        reuse = False
        try:
            writer.write(json.dumps(self._event()).encode() + b"\n")
            await writer.drain()
            async with asyncio.timeout(15):
                line = await reader.readline()
            if not line.endswith(b"\n"):
                raise ConnectionResetError("closed without an answer")
            self.stats.statuses[f"tcp:{line.split()[0].decode()}"] += 1
            if line.startswith(b"OK "):
                self.stats.acked.add(line[3:].strip().decode())
            elif not line.startswith((b"BYE", b"ERR overloaded")):
                self.stats.unexpected.append(f"tcp {line[:200]!r}")
            reuse = line.startswith((b"OK ", b"ERR overloaded"))
        finally:
            if reuse and self._tcp.qsize() < self.TCP_POOL:
                self._tcp.put_nowait((reader, writer))
            else:
                writer.close()


# -- the processes ------------------------------------------------------------------------


def _proxy(upstream_port: int, rate: float, seed: int) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.faultproxy",
            "--upstream",
            f"127.0.0.1:{upstream_port}",
            "--fault-rate",
            str(rate),
            "--fault-latency",
            "0.5",
            "--seed",
            str(seed),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = json.loads(proc.stdout.readline())
    return proc, int(line["port"])


def _sample(pid: int, metrics_url: str) -> dict[str, float]:
    import psutil

    from tests.support.process import scrape

    p = psutil.Process(pid)
    samples = scrape(metrics_url)
    tasks = sum(v for k, v in samples.items() if k.split("{")[0].endswith("_asyncio_tasks"))
    return {
        "t": time.monotonic(),
        "rss": float(p.memory_info().rss),
        "fds": float(p.num_fds()),
        "tasks": tasks,
    }


async def _sampler(pid: int, url: str, interval: float, out: list[dict[str, float]]) -> None:
    while True:
        out.append(await asyncio.to_thread(_sample, pid, url))
        await asyncio.sleep(interval)


async def _quiet_counts(load: Load, pid: int, url: str, wait: float) -> dict[str, float]:
    """Tasks and fds with the load paused and in-flight work done (the least of 3 reads).

    ``wait`` lets the service's idle downstream connections expire (aiohttp's
    client closes them at a 15 s cleanup tick after 15 s idle: up to 30 s), so
    both counts compare the same idle service rather than two pool sizes.
    """
    await load.quiesce()
    await load.reset_session()
    await asyncio.sleep(wait)
    reads = []
    for _ in range(3):
        reads.append(await asyncio.to_thread(_sample, pid, url))
        await asyncio.sleep(0.3)
    return {"tasks": min(r["tasks"] for r in reads), "fds": min(r["fds"] for r in reads)}


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    from service.settings import Settings
    from tests.support.process import ServiceProcess, service_env

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    sink = work / "events.jsonl"
    procs: list[ServiceProcess] = []
    proxies: list[subprocess.Popen[bytes]] = []
    report: dict[str, Any] = {
        "duration_seconds": args.duration,
        "load_fraction": args.load,
        "fault_rate": args.fault_rate,
    }
    try:
        ports = []
        for name in ("users", "orders"):
            stub = ServiceProcess(
                ["stub", "--name", name, "--port", "0"], env={"SERVICE_LOG__ACCESS_LOG": "false"}
            ).start()
            procs.append(stub)
            ports.append(stub.wait_listening()["http"])
        urls = []
        for i, port in enumerate(ports):
            proxy, proxy_port = _proxy(port, args.fault_rate, seed=i + 1)
            proxies.append(proxy)
            urls.append(f"http://127.0.0.1:{proxy_port}")
        env = {
            **service_env(),
            "SERVICE_PIPELINE__SINK_PATH": str(sink),
            "SERVICE_DOWNSTREAM__USERS_URL": urls[0],
            "SERVICE_DOWNSTREAM__ORDERS_URL": urls[1],
            "SERVICE_LOG__ACCESS_LOG": "false",
        }
        svc = ServiceProcess(["serve"], env=env).start()
        procs.append(svc)
        svc.wait_listening()
        assert svc.proc is not None
        pid = svc.proc.pid
        metrics_url = svc.url("/metrics", "admin")
        shutdown = Settings().shutdown
        budget = (
            shutdown.readiness_delay
            + shutdown.grace_seconds
            + shutdown.drain_seconds
            + 2 * shutdown.cancel_seconds
        )

        async with Load(svc.url(), svc.ports["tcp"]) as load:
            _log(f"measuring capacity for {args.calibrate:.0f}s (closed loop, mixed)")
            capacity = await load.run_closed(args.calibrate)
            rate = capacity * args.load
            report |= {"capacity_rps": round(capacity, 1), "rate_rps": round(rate, 1)}
            _log(
                f"capacity {capacity:.0f} req/s; soaking at {rate:.0f} req/s "
                f"({args.load:.0%}) for {args.duration:.0f}s, {args.fault_rate:.1%} faults"
            )
            warmup = min(max(args.duration * 0.2, 10.0), 60.0)
            await load.run_open(rate, warmup)
            start_counts = await _quiet_counts(load, pid, metrics_url, args.quiet_seconds)
            samples: list[dict[str, float]] = []
            sampler = asyncio.create_task(
                _sampler(pid, metrics_url, args.sample_interval, samples), name="soak-sampler"
            )
            try:
                await load.run_open(rate, max(args.duration - warmup, 1.0))
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            end_counts = await _quiet_counts(load, pid, metrics_url, args.quiet_seconds)
            _log("SIGTERM under load")
            stop_load = asyncio.create_task(load.run_open(rate, budget + 5), name="soak-tail")
            await asyncio.sleep(1.0)
            load.draining = True  # from here on, 503 and refused connections are expected
            sent = time.monotonic()
            svc.signal(signal.SIGTERM)
            code = await asyncio.to_thread(svc.wait, budget + 30)
            shutdown_seconds = time.monotonic() - sent
            stop_load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop_load
        stats = load.stats
        in_sink = set()
        if sink.exists():
            for line in sink.read_bytes().splitlines():
                with contextlib.suppress(ValueError):
                    in_sink.add(json.loads(line)["id"])
        faults = _stop_proxies(proxies)
        t0 = samples[0]["t"] if samples else 0.0
        rss = [(s["t"] - t0, s["rss"]) for s in samples]
        report |= {
            "requests": stats.requests,
            "statuses": dict(sorted(stats.statuses.items())),
            "errors": dict(sorted(stats.errors.items())),
            "unexpected_5xx": len(stats.unexpected),
            "unexpected_examples": stats.unexpected[:5],
            "dropped_mid_request": stats.dropped,
            "acknowledged_events": len(stats.acked),
            "events_lost": len(stats.acked - in_sink),
            "faults_injected": faults,
            "samples": len(samples),
            "rss_start_mb": round(rss[0][1] / 1e6, 2) if rss else None,
            "rss_end_mb": round(rss[-1][1] / 1e6, 2) if rss else None,
            "rss_growth_bytes_per_10_min": round(rss_growth_per_10_min(rss)),
            "tasks_start": start_counts["tasks"],
            "tasks_end": end_counts["tasks"],
            "fds_start": start_counts["fds"],
            "fds_end": end_counts["fds"],
            "exit_code": code,
            "shutdown_seconds": round(shutdown_seconds, 2),
            "shutdown_budget_seconds": budget,
            "summary_line": (svc.events("shutdown complete") or [{}])[-1],
        }
        return report
    finally:
        for proc in procs:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.stop(10)
        _stop_proxies(proxies)


def _stop_proxies(proxies: list[subprocess.Popen[bytes]]) -> dict[str, int]:
    faults: Counter[str] = Counter()
    for proxy in proxies:
        if proxy.poll() is None:
            proxy.send_signal(signal.SIGTERM)
            out, _ = proxy.communicate(timeout=10)
            for line in out.splitlines():
                with contextlib.suppress(ValueError):
                    doc = json.loads(line)
                    if doc.get("event") == "stopped":
                        faults.update({k: v for k, v in doc.items() if k != "event"})
    return dict(faults)


def _log(msg: str) -> None:
    print(f"soak: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration",
        type=float,
        default=float(os.environ.get("SOAK_SECONDS", "600")),
        help="seconds of load (default: SOAK_SECONDS or 600)",
    )
    parser.add_argument("--load", type=float, default=0.7, help="fraction of the capacity")
    parser.add_argument("--fault-rate", type=float, default=0.01)
    parser.add_argument(
        "--calibrate",
        type=float,
        default=8.0,
        help="seconds of closed-loop load to measure the capacity",
    )
    parser.add_argument("--sample-interval", type=float, default=3.0)
    parser.add_argument(
        "--quiet-seconds",
        type=float,
        default=32.0,
        help="idle time before counting tasks and fds (start and end)",
    )
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args(argv)
    report = asyncio.run(soak(args))
    verdict = judge(report)
    report["failures"] = verdict.failures
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    for failure in verdict.failures:
        _log(f"FAIL: {failure}")
    if not verdict.failures:
        _log("PASS")
    return 1 if verdict.failures else 0


if __name__ == "__main__":
    sys.exit(main())
