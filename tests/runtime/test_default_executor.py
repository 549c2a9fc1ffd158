"""The loop's default executor is the I/O pool: ``run_in_executor(None)``, ``to_thread``.

Both idioms must be counted in ``service_executor_*``, carry the request id,
and be bounded at shutdown like ``Offload.run_io``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from service.runtime import offload as offload_module
from service.runtime.metrics import Metrics
from service.runtime.offload import Offload
from service.runtime.requestid import request_id_var
from service.runtime.settings import OffloadSettings
from tests.support.process import ServiceProcess, running_service, scrape, service_env

APP = "tests.apps.offload_app"


def _request_id() -> str | None:
    return request_id_var.get()


def _thread_name() -> str:
    return threading.current_thread().name


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


@pytest_asyncio.fixture
async def offload() -> AsyncIterator[Offload]:
    off = Offload(OffloadSettings(io_workers=2), Metrics())
    off.serve_as_default()
    yield off
    await off.close(5.0)


@pytest.mark.asyncio
async def test_run_in_executor_none_runs_on_the_io_pool_with_the_request_id(
    offload: Offload,
) -> None:
    loop = asyncio.get_running_loop()
    request_id_var.set("rid-none")
    assert await loop.run_in_executor(None, _request_id) == "rid-none"
    assert (await loop.run_in_executor(None, _thread_name)).startswith("offload-io")
    await _until(lambda: not offload._io.jobs)
    assert offload._io.duration.count == 2


@pytest.mark.asyncio
async def test_to_thread_runs_on_the_io_pool_and_is_counted_while_it_runs(
    offload: Offload,
) -> None:
    release = threading.Event()
    job = asyncio.create_task(asyncio.to_thread(release.wait, 10))
    await _until(lambda: offload._io.running() == 1)
    assert (await asyncio.to_thread(_thread_name)).startswith("offload-io")
    release.set()
    assert await job is True
    await _until(lambda: not offload._io.jobs)
    assert offload._io.duration.count == 2


@pytest.mark.asyncio
async def test_close_abandons_a_stuck_to_thread_job_and_leaves_the_loop_a_fresh_pool() -> None:
    off = Offload(OffloadSettings(io_workers=2), Metrics())
    off.serve_as_default()
    before = offload_module.abandoned_jobs()
    release = threading.Event()
    stuck = asyncio.create_task(asyncio.to_thread(release.wait, 30))
    await _until(lambda: off._io.running() == 1)
    started = time.monotonic()
    await off.close(0.2)
    assert time.monotonic() - started < 1.0
    assert off.summary() == {"executor_jobs_abandoned": 1}
    # After close the loop has a default pool that does not hold the stuck
    # thread: the loop's own shutdown (which joins it) does not wait for it.
    assert not (await asyncio.to_thread(_thread_name)).startswith("offload-io")
    release.set()
    assert await stuck is True
    offload_module._abandoned_total = before  # the thread ended: nothing left at exit


# -- the service process -----------------------------------------------------


def _post(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> Any:
    req = urllib.request.Request(url, data=b"", method="POST", headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _io(proc: ServiceProcess) -> dict[str, float]:
    samples = scrape(proc.url("/metrics", "admin"))
    return {
        "running": samples['service_executor_jobs{executor="io",state="running"}'],
        "count": samples['service_executor_job_duration_seconds_count{executor="io"}'],
    }


@pytest.mark.parametrize("how", ["to_thread", "executor"])
def test_both_idioms_in_a_handler_are_counted_and_carry_the_request_id(how: str) -> None:
    with running_service(module=APP) as proc:
        before = _io(proc)["count"]
        body = _post(proc.url(f"/test/thread?how={how}"), {"X-Request-ID": f"rid-{how}"})
        assert body == {"request_id": f"rid-{how}"}
        deadline = time.monotonic() + 5
        while _io(proc)["count"] < before + 1:
            assert time.monotonic() < deadline, _io(proc)
            time.sleep(0.02)
        # A job that blocks shows as running on the I/O executor while it runs.
        answered = threading.Thread(
            target=_post, args=(proc.url(f"/test/thread?how={how}&seconds=30"),), daemon=True
        )
        answered.start()
        deadline = time.monotonic() + 5
        while _io(proc)["running"] != 1:
            assert time.monotonic() < deadline, _io(proc)
            time.sleep(0.02)
        _post(proc.url("/test/release"))
        answered.join(10)
        assert not answered.is_alive()


GRACE = 2.0


@pytest.mark.slow
def test_sigterm_with_a_stuck_to_thread_job_exits_within_grace_plus_2s() -> None:
    """The default executor's thread is abandoned like run_io's: not joined at loop close."""
    env = {**service_env(), "SERVICE_SHUTDOWN__GRACE_SECONDS": str(GRACE)}
    proc = ServiceProcess([], env=env, module=APP).start()
    try:
        proc.wait_listening()

        def post() -> None:
            # The service goes away with the request unanswered.
            with contextlib.suppress(OSError, http.client.HTTPException):
                _post(proc.url("/test/thread?how=to_thread&seconds=120"), timeout=70)

        threading.Thread(target=post, daemon=True).start()
        deadline = time.monotonic() + 10
        while _io(proc)["running"] != 1:
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.02)
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        code = proc.wait(GRACE + 15)
        elapsed = time.monotonic() - started
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.wait(5)
    print(f"exit {code} after {elapsed:.2f} s (grace {GRACE} s)")
    assert code == 0
    assert elapsed < GRACE + 2
    (summary,) = proc.events("shutdown complete")
    assert summary["executor_jobs_abandoned"] == 1
    (warning,) = proc.events("executor jobs abandoned at shutdown")
    assert warning["io"] == 1
