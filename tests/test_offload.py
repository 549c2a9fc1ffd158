"""service.offload: context carry-over, the bounded backlog, cancellation, bounded shutdown."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import structlog

from service import offload as offload_module
from service.config import OffloadSettings
from service.errors import ExecutorBusy
from service.log import request_id_var
from service.metrics import Metrics
from service.offload import Offload
from tests.helpers import parse_metrics


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
    offload: Offload, metrics: Metrics, gate: Gate,
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
    offload: Offload, gate: Gate,
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
    offload: Offload, gate: Gate,
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
