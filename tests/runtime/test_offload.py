"""The executors: context carry-over, the bounded backlog, cancellation, bounded shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import math
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog

from service.runtime import offload as offload_module
from service.runtime.errors import ExecutorBusy
from service.runtime.metrics import LAG_BUCKETS, Metrics
from service.runtime.offload import Offload
from service.runtime.requestid import request_id_var
from service.runtime.settings import OffloadSettings
from tests.support.process import (
    ServiceProcess,
    parse_metrics,
    require_tool,
    running_service,
    scrape,
    service_env,
)


def _gauge(metrics: Metrics, executor: str, state: str) -> float:
    from prometheus_client import generate_latest

    samples = parse_metrics(generate_latest(metrics.registry).decode())
    return samples[f'service_executor_jobs{{executor="{executor}",state="{state}"}}']


def _request_id() -> str | None:
    return request_id_var.get()


def _bound() -> dict[str, Any]:
    return structlog.contextvars.get_contextvars()


def _fail() -> None:
    raise KeyError("boom")


def _pid() -> int:
    return os.getpid()


class Gate:
    """A blocking job that runs until the test opens the gate (always opened at teardown)."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.started = threading.Semaphore(0)
        self.ran = 0

    def job(self, value: int = 0) -> int:
        self.ran += 1
        self.started.release()
        self.opened.wait(30)
        return value

    async def wait_started(self, n: int = 1) -> None:
        for _ in range(n):
            while not self.started.acquire(blocking=False):
                await asyncio.sleep(0.001)


@pytest.fixture
def gate() -> Any:
    g = Gate()
    yield g
    g.opened.set()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest_asyncio.fixture
async def offload(metrics: Metrics) -> AsyncIterator[Offload]:
    off = Offload(OffloadSettings(cpu_workers=1, max_queued=2, io_workers=2), metrics)
    yield off
    await off.close(5.0)


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


@pytest.mark.asyncio
async def test_jobs_see_the_callers_request_id_and_bound_values(offload: Offload) -> None:
    request_id_var.set("rid-42")
    structlog.contextvars.bind_contextvars(tenant="t1")
    try:
        assert await offload.run_cpu(_request_id) == "rid-42"
        assert await offload.run_io(_request_id) == "rid-42"
        assert (await offload.run_cpu(_bound))["tenant"] == "t1"
    finally:
        structlog.contextvars.clear_contextvars()


@pytest.mark.asyncio
async def test_a_jobs_error_reaches_the_caller_and_its_run_time_is_observed(
    offload: Offload,
) -> None:
    with pytest.raises(KeyError, match="boom"):
        await offload.run_cpu(_fail)
    await _until(lambda: not offload._cpu.jobs)
    hist = offload._cpu.duration
    assert hist.count == 1


@pytest.mark.asyncio
async def test_full_backlog_is_refused_at_once_and_counted(
    offload: Offload,
    metrics: Metrics,
    gate: Gate,
) -> None:
    # 1 worker + 2 queued = 3 jobs in flight at most.
    tasks = [asyncio.create_task(offload.run_cpu(gate.job, i)) for i in range(3)]
    await gate.wait_started()
    await asyncio.sleep(0)
    assert _gauge(metrics, "cpu", "running") == 1
    assert _gauge(metrics, "cpu", "queued") == 2
    started = time.perf_counter()
    with pytest.raises(ExecutorBusy) as info:
        await offload.run_cpu(gate.job, 99)
    assert time.perf_counter() - started < 0.05
    assert info.value.retry_after >= 1
    assert offload._cpu.rejected.value == 1
    assert gate.ran == 1  # the refused job never reached the executor
    gate.opened.set()
    assert await asyncio.gather(*tasks) == [0, 1, 2]
    await _until(lambda: not offload._cpu.jobs)
    assert _gauge(metrics, "cpu", "queued") == 0
    assert _gauge(metrics, "cpu", "running") == 0


@pytest.mark.asyncio
async def test_cancelled_caller_keeps_the_slot_until_the_running_job_ends(
    offload: Offload,
    gate: Gate,
) -> None:
    task = asyncio.create_task(offload.run_cpu(gate.job, 7))
    await gate.wait_started()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The thread is still busy: its slot still counts against the backlog.
    await asyncio.sleep(0.01)
    assert len(offload._cpu.jobs) == 1
    gate.opened.set()
    await _until(lambda: not offload._cpu.jobs)  # freed when the job really ended
    assert offload._cpu.duration.count == 1  # the result was discarded, the run time kept


@pytest.mark.asyncio
async def test_cancelled_caller_of_a_queued_job_frees_the_slot_and_the_job_never_runs(
    offload: Offload,
    gate: Gate,
) -> None:
    running = asyncio.create_task(offload.run_cpu(gate.job, 1))
    await gate.wait_started()
    queued = asyncio.create_task(offload.run_cpu(gate.job, 2))
    await asyncio.sleep(0.01)
    assert len(offload._cpu.jobs) == 2
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    await _until(lambda: len(offload._cpu.jobs) == 1)
    gate.opened.set()
    assert await running == 1
    await _until(lambda: not offload._cpu.jobs)
    assert gate.ran == 1


@pytest.mark.asyncio
async def test_io_jobs_are_not_bounded_by_the_cpu_backlog(offload: Offload, gate: Gate) -> None:
    tasks = [asyncio.create_task(offload.run_io(gate.job, i)) for i in range(10)]
    await gate.wait_started(2)  # io_workers=2 run, the rest wait without refusal
    gate.opened.set()
    assert await asyncio.gather(*tasks) == list(range(10))


@pytest.mark.asyncio
async def test_run_in_executor_on_the_io_pool_is_accounted_like_run_io(
    offload: Offload,
    gate: Gate,
) -> None:
    """``run_in_executor(offload.io, ...)`` (the sink's way): context, metrics, shutdown apply."""
    loop = asyncio.get_running_loop()
    request_id_var.set("rid-raw")
    assert await loop.run_in_executor(offload.io, _request_id) == "rid-raw"
    job = loop.run_in_executor(offload.io, gate.job, 3)
    await gate.wait_started()
    assert offload._io.running() == 1
    gate.opened.set()
    assert await job == 3
    await _until(lambda: not offload._io.jobs)
    assert offload._io.duration.count == 2
    # Submitted from a thread with no loop, a job runs plainly: no context, untracked.
    assert await asyncio.to_thread(lambda: offload.io.submit(_request_id).result(5)) is None
    assert offload._io.duration.count == 2


@pytest.mark.asyncio
async def test_close_abandons_a_stuck_job_within_its_timeout(gate: Gate) -> None:
    off = Offload(OffloadSettings(cpu_workers=1, max_queued=2), Metrics())
    before = offload_module.abandoned_jobs()
    stuck = asyncio.create_task(off.run_cpu(gate.job, 1))
    queued = asyncio.create_task(off.run_cpu(gate.job, 2))
    await gate.wait_started()
    started = time.monotonic()
    await off.close(0.2)
    assert time.monotonic() - started < 1.0
    assert off.summary() == {"executor_jobs_abandoned": 1}
    assert offload_module.abandoned_jobs() == before + 1
    with pytest.raises(asyncio.CancelledError):
        await queued  # cancelled by the shutdown, it never ran
    assert gate.ran == 1
    with pytest.raises(RuntimeError, match="closed"):
        await off.run_cpu(gate.job, 3)
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    # Keep the module counter honest for the CLI of this test process: the
    # thread ends now, so nothing is left running at exit.
    offload_module._abandoned_total -= 1


@pytest.mark.asyncio
async def test_close_waits_for_jobs_that_finish_in_time(gate: Gate) -> None:
    off = Offload(OffloadSettings(cpu_workers=1), Metrics())
    task = asyncio.create_task(off.run_cpu(gate.job, 5))
    await gate.wait_started()
    threading.Timer(0.05, gate.opened.set).start()
    await off.close(5.0)
    assert off.summary() == {"executor_jobs_abandoned": 0}
    assert await task == 5


@pytest.mark.asyncio
async def test_process_executor_runs_jobs_with_the_request_id() -> None:
    off = Offload(OffloadSettings(cpu_kind="process", cpu_workers=1), Metrics())
    try:
        request_id_var.set("rid-proc")
        assert await off.run_cpu(_request_id) == "rid-proc"
        assert await off.run_cpu(_pid) != os.getpid()
        with pytest.raises(KeyError):
            await off.run_cpu(_fail)
    finally:
        await off.close(5.0)
    assert off.summary() == {"executor_jobs_abandoned": 0}


@pytest.mark.asyncio
async def test_close_terminates_worker_processes_that_run_abandoned_jobs() -> None:
    off = Offload(OffloadSettings(cpu_kind="process", cpu_workers=1), Metrics())
    before = offload_module.abandoned_jobs()
    await off.run_cpu(_pid)  # the worker is up
    stuck = asyncio.create_task(off.run_cpu(time.sleep, 60))
    await _until(lambda: off._cpu.running() == 1)
    await off.close(0.2)
    assert off.summary() == {"executor_jobs_abandoned": 1}
    assert offload_module.abandoned_jobs() == before + 1
    offload_module._abandoned_total -= 1  # terminated below: nothing is left running at exit
    (worker,) = off._cpu.worker_processes
    worker.join(5)
    assert not worker.is_alive()
    stuck.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await stuck


# -- the service process under load ------------------------------------------
# One process (the real service plus the test-only routes of tests/apps/offload_app.py)
# serves the load tests; a process of its own is signalled in the shutdown tests.

APP = "tests.apps.offload_app"
LAG = "service_event_loop_lag_seconds_bucket"
HASH_ENV = {
    "SERVICE_OFFLOAD__CPU_WORKERS": "2",
    "SERVICE_OFFLOAD__MAX_QUEUED": "8",  # capacity 10 jobs
    "SERVICE_OFFLOAD__HASH_COST": "16384",  # the default: 50-100 ms a hash here
    # Sample the loop often enough for a p99 over a few seconds.
    "SERVICE_METRICS__LOOP_LAG_INTERVAL": "0.01",
    "SERVICE_LOG__LEVEL": "debug",
}


@pytest.fixture(scope="module")
def hash_service() -> Iterator[ServiceProcess]:
    with running_service(module=APP, env=HASH_ENV) as proc:
        yield proc


def http_post(
    url: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _post_in_background(url: str, answers: list[int] | None = None) -> threading.Thread:
    """POST from a thread; a connection the server closes counts as no answer."""

    def post() -> None:
        try:
            status = http_post(url, b"", timeout=70)[0]
        except (OSError, http.client.HTTPException):
            return
        if answers is not None:
            answers.append(status)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def _lag_buckets(proc: ServiceProcess) -> dict[float, float]:
    samples = scrape(proc.url("/metrics", "admin"))
    prefix = f'{LAG}{{le="'
    return {float(k[len(prefix) : -2]): v for k, v in samples.items() if k.startswith(prefix)}


def _p99_bound(before: dict[float, float], after: dict[float, float]) -> tuple[float, int]:
    """The smallest bucket bound holding 99% of the observations between two scrapes."""
    delta = {le: after[le] - before.get(le, 0.0) for le in after}
    total = delta[math.inf]
    for le in sorted(delta):
        if delta[le] >= 0.99 * total:
            return le, int(total)
    raise AssertionError("no +Inf bucket")


def _executor(proc: ServiceProcess, state: str) -> float:
    samples = scrape(proc.url("/metrics", "admin"))
    return samples[f'service_executor_jobs{{executor="cpu",state="{state}"}}']


def _wait_executor(proc: ServiceProcess, running: int, queued: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (_executor(proc, "running"), _executor(proc, "queued")) != (running, queued):
        assert time.monotonic() < deadline, "executor did not reach the expected state"
        time.sleep(0.02)


def _wrk(
    proc: ServiceProcess, path: str, tmp_path: Path, connections: int, seconds: float
) -> dict[str, float]:
    """POST a small hash request from another process (wrk) at full load."""
    wrk = require_tool("wrk")
    script = tmp_path / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.body = \'{"data": "correct horse battery staple"}\'\n'
    )
    out = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            proc.url(path),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    requests = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert requests is not None, out
    return {
        "requests": float(requests.group(1)),
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


class Prober(threading.Thread):
    """GET a path every few ms over one keep-alive connection, timing each answer."""

    def __init__(self, port: int, path: str = "/livez") -> None:
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            while not self.stop.is_set():
                start = time.perf_counter()
                conn.request("GET", self.path)
                resp = conn.getresponse()
                resp.read()
                self.latencies.append(time.perf_counter() - start)
                self.statuses.append(resp.status)
                self.stop.wait(0.005)
        finally:
            conn.close()


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def _buckets_above(bound: float, steps: int) -> float:
    """The loop-lag bucket bound ``steps`` buckets above ``bound``."""
    bounds = [*LAG_BUCKETS, math.inf]
    return bounds[min(len(bounds) - 1, bounds.index(bound) + steps)]


def _responsiveness(proc: ServiceProcess, load: Callable[[], Any]) -> dict[str, float]:
    """Loop lag (the service's histogram) and /livez latency while ``load`` runs."""
    before = _lag_buckets(proc)
    prober = Prober(proc.ports["http"])
    prober.start()
    try:
        load()
    finally:
        prober.stop.set()
        prober.join(10)
    lag_p99, samples = _p99_bound(before, _lag_buckets(proc))
    assert samples >= 100
    assert set(prober.statuses) == {200}
    assert len(prober.latencies) >= 100
    return {"lag_p99": lag_p99, "livez_p99": _p99(prober.latencies)}


@pytest.mark.slow
def test_hash_at_full_load_keeps_the_loop_responsive(
    hash_service: ServiceProcess,
    tmp_path: Path,
) -> None:
    """Lag p99 < 10 ms and /livez p99 < 20 ms while the CPU executor is saturated.

    Baselines with no load are measured just before and just after, so they
    bracket the machine's own noise. On a quiet machine (lag p99 <= 1 ms,
    /livez p99 <= 6 ms) the limits are the plain 10 and 20 ms; on a machine
    busy with other work they become two lag buckets above, and three times,
    the worse baseline's. Hashing on the loop instead fails either way: one
    hash takes 50-100 ms here, more under load.
    """
    proc = hash_service
    _wait_executor(proc, 0, 0)
    base = _responsiveness(proc, lambda: time.sleep(1.5))
    hashed_before = scrape(proc.url("/metrics", "admin"))[
        'service_executor_job_duration_seconds_count{executor="cpu"}'
    ]
    wrk: dict[str, float] = {}
    loaded = _responsiveness(
        proc, lambda: wrk.update(_wrk(proc, "/v1/hash", tmp_path, connections=8, seconds=3))
    )
    hashed = (
        scrape(proc.url("/metrics", "admin"))[
            'service_executor_job_duration_seconds_count{executor="cpu"}'
        ]
        - hashed_before
    )
    _wait_executor(proc, 0, 0)
    after = _responsiveness(proc, lambda: time.sleep(1.5))
    base = {key: max(base[key], after[key]) for key in base}
    lag_limit = max(0.010, _buckets_above(base["lag_p99"], 2))
    livez_limit = max(0.020, 3 * base["livez_p99"])
    print(
        f"hash load: {wrk['requests']:.0f} requests, {hashed:.0f} hashed; lag p99 <= "
        f"{loaded['lag_p99'] * 1000:g} ms (baseline <= {base['lag_p99'] * 1000:g} ms, limit "
        f"{lag_limit * 1000:g}); /livez p99 {loaded['livez_p99'] * 1000:.2f} ms (baseline "
        f"{base['livez_p99'] * 1000:.2f} ms, limit {livez_limit * 1000:.1f})"
    )
    assert wrk["non2xx"] == 0  # 8 connections fit the backlog: all were hashed
    assert hashed >= 10
    assert loaded["lag_p99"] <= lag_limit
    assert loaded["livez_p99"] < livez_limit


@pytest.mark.slow
def test_the_same_work_inline_on_the_loop_stalls_it(
    hash_service: ServiceProcess,
    tmp_path: Path,
) -> None:
    """The contrast: the hash run on the loop (test app only) drives the lag p99 over 100 ms."""
    proc = hash_service
    before = _lag_buckets(proc)
    _wrk(proc, "/test/hash-inline", tmp_path, connections=4, seconds=2)
    lag_p99, samples = _p99_bound(before, _lag_buckets(proc))
    print(f"inline hash: lag p99 <= {lag_p99 * 1000:g} ms over {samples} samples")
    assert lag_p99 > 0.1


@pytest.mark.slow
def test_request_id_reaches_the_log_line_written_inside_the_job(
    hash_service: ServiceProcess,
) -> None:
    rid = f"offload-test-{os.getpid()}"
    status, headers, _ = http_post(
        hash_service.url("/v1/hash"), b'{"data": "x"}', {"X-Request-ID": rid}
    )
    assert status == 200
    assert headers["X-Request-ID"] == rid
    deadline = time.monotonic() + 5
    while not [e for e in hash_service.events("hash computed") if e.get("request_id") == rid]:
        assert time.monotonic() < deadline, "no job log line with the request id"
        time.sleep(0.02)
    line = next(e for e in hash_service.events("hash computed") if e.get("request_id") == rid)
    assert line["thread"].startswith("offload-cpu")  # written in the executor thread


def _rss_bytes(pid: int) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_full_backlog_answers_503_at_once_and_memory_stays_flat(
    hash_service: ServiceProcess,
) -> None:
    proc = hash_service
    _wait_executor(proc, 0, 0)
    # Fill the executor: 2 running and 8 queued jobs that block until released.
    fillers = [_post_in_background(proc.url("/test/block?seconds=60")) for _ in range(10)]
    try:
        _wait_executor(proc, 2, 8)
        conn = http.client.HTTPConnection("127.0.0.1", proc.ports["http"], timeout=10)
        body = b'{"data": "x"}'
        headers = {"Content-Type": "application/json"}

        def probe(n: int) -> tuple[list[float], list[float]]:
            """n refused hashes, each followed by a /livez (the cheapest route) as baseline."""
            refused, livez = [], []
            for _ in range(n):
                start = time.perf_counter()
                conn.request("POST", "/v1/hash", body, headers)
                resp = conn.getresponse()
                resp.read()
                refused.append(time.perf_counter() - start)
                assert resp.status == 503
                assert resp.getheader("Retry-After") is not None
                start = time.perf_counter()
                conn.request("GET", "/livez")
                conn.getresponse().read()
                livez.append(time.perf_counter() - start)
            return refused, livez

        rejected_before = scrape(proc.url("/metrics", "admin"))[
            'service_executor_rejected_total{executor="cpu"}'
        ]
        probe(500)  # warm-up: caches, metric children, allocator arenas
        assert proc.proc is not None
        rss_before = _rss_bytes(proc.proc.pid)
        refused, livez = probe(3000)
        rss_growth = _rss_bytes(proc.proc.pid) - rss_before
        conn.close()
        rejected = (
            scrape(proc.url("/metrics", "admin"))['service_executor_rejected_total{executor="cpu"}']
            - rejected_before
        )
        p99, base_p99 = _p99(refused), _p99(livez)
        # 5 ms, or twice the /livez p99 measured alongside on a machine busy with other work.
        limit = max(0.005, 2 * base_p99)
        print(
            f"503 p99 {p99 * 1000:.2f} ms over {len(refused)} (/livez alongside "
            f"{base_p99 * 1000:.2f} ms, limit {limit * 1000:.1f}), RSS growth "
            f"{rss_growth / 1024:.0f} KiB"
        )
        assert rejected == 3500
        assert p99 < limit
        assert rss_growth < 2 * 1024 * 1024  # < 700 bytes per refused request
        _wait_executor(proc, 2, 8)  # refusals took no slot
    finally:
        http_post(proc.url("/test/release"), b"")
        for t in fillers:
            t.join(10)
    _wait_executor(proc, 0, 0)


def _shutdown_service() -> ServiceProcess:
    env = {
        **service_env(),
        "SERVICE_SHUTDOWN__GRACE_SECONDS": str(GRACE),
        "SERVICE_OFFLOAD__CPU_WORKERS": "1",
    }
    proc = ServiceProcess([], env=env, module=APP).start()
    proc.wait_listening()
    return proc


GRACE = 2.0


@pytest.mark.slow
def test_sigterm_with_a_120s_job_exits_within_grace_plus_2s_and_says_it_was_abandoned() -> None:
    proc = _shutdown_service()
    try:
        _post_in_background(proc.url("/test/block?seconds=120"))
        _wait_executor(proc, 1, 0)
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        code = proc.wait(GRACE + 10)
        elapsed = time.monotonic() - started
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.wait(5)
    print(f"exit {code} after {elapsed:.2f} s (grace {GRACE} s)")
    assert code == 0  # not killed: nothing acknowledged was lost
    assert elapsed < GRACE + 2
    (summary,) = proc.events("shutdown complete")
    assert summary["executor_jobs_abandoned"] == 1
    (warning,) = proc.events("executor jobs abandoned at shutdown")
    assert warning["cpu"] == 1


@pytest.mark.slow
def test_sigterm_lets_a_job_that_ends_within_the_grace_period_answer() -> None:
    proc = _shutdown_service()
    answers: list[int] = []
    try:
        client = _post_in_background(proc.url("/test/block?seconds=0.7"), answers)
        _wait_executor(proc, 1, 0)
        proc.signal(signal.SIGTERM)
        code = proc.wait(GRACE + 10)
        client.join(10)
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.wait(5)
    assert code == 0
    assert answers == [200]
    (summary,) = proc.events("shutdown complete")
    assert summary["executor_jobs_abandoned"] == 0
