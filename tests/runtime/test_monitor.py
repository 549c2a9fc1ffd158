"""The loop monitor: live tasks by group and state, how named tasks end, loop lag."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import operator
import time

import pytest
from prometheus_client import generate_latest

from service.runtime import log
from service.runtime.metrics import Metrics
from service.runtime.monitor import configure_debug, monitoring, task_dump
from tests.support.process import parse_metrics


def _metrics() -> Metrics:
    """Metrics with the groups these tests name their tasks into, as components register them."""
    metrics = Metrics()
    for group in ("pipeline", "tcp", "downstream", "offload", "stream"):
        metrics.register_task_group(group)
    return metrics


def _samples(metrics: Metrics) -> dict[str, float]:
    return parse_metrics(generate_latest(metrics.registry).decode())


def _tasks(samples: dict[str, float], group: str, state: str) -> float:
    return samples[f'service_asyncio_tasks{{group="{group}",state="{state}"}}']


def _finished(samples: dict[str, float], group: str, outcome: str) -> float:
    return samples[f'service_asyncio_tasks_finished_total{{group="{group}",outcome="{outcome}"}}']


@pytest.mark.asyncio
async def test_live_tasks_by_group_and_state() -> None:
    metrics = _metrics()
    release = asyncio.Event()
    cleanup = asyncio.Event()

    async def worker() -> None:
        await release.wait()

    async def slow_to_cancel() -> None:
        try:
            await release.wait()
        except asyncio.CancelledError:
            await cleanup.wait()  # still cleaning up: "cancelling"
            raise

    async with monitoring(metrics, lag_interval=0.05):
        workers = [asyncio.create_task(worker(), name=f"pipeline:enrich-{i}") for i in range(3)]
        tcp = asyncio.create_task(worker(), name="tcp:conn-1")
        unnamed = asyncio.create_task(worker())
        dying = asyncio.create_task(slow_to_cancel(), name="downstream:call")
        await asyncio.sleep(0.01)
        dying.cancel()
        await asyncio.sleep(0.01)
        samples = _samples(metrics)
        assert _tasks(samples, "pipeline", "pending") == 3
        assert _tasks(samples, "tcp", "pending") == 1
        assert _tasks(samples, "downstream", "cancelling") == 1
        assert _tasks(samples, "downstream", "pending") == 0
        assert _tasks(samples, "monitor", "pending") == 1  # the lag monitor itself
        assert _tasks(samples, "other", "running") == 1  # this test's task, scraping
        assert _tasks(samples, "other", "pending") >= 1  # the unnamed one
        release.set()
        cleanup.set()
        await asyncio.gather(*workers, tcp, unnamed, dying, return_exceptions=True)
    samples = _samples(metrics)
    assert _tasks(samples, "pipeline", "pending") == 0  # the loop is forgotten after the block


@pytest.mark.asyncio
async def test_finished_tasks_counted_by_outcome() -> None:
    metrics = _metrics()

    async def ok() -> int:
        return 1

    async def fail() -> None:
        raise RuntimeError("expected")

    async def forever() -> None:
        await asyncio.sleep(3600)

    async with monitoring(metrics, lag_interval=0.05):
        done = [asyncio.create_task(ok(), name=f"pipeline:ok-{i}") for i in range(2)]
        failed = asyncio.create_task(fail(), name="offload:job")
        cancelled = asyncio.create_task(forever(), name="stream:sub")
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(*done, failed, cancelled, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run one loop turn later
        samples = _samples(metrics)
    assert _finished(samples, "pipeline", "finished") == 2
    assert _finished(samples, "offload", "failed") == 1
    assert _finished(samples, "stream", "cancelled") == 1
    assert _finished(samples, "pipeline", "failed") == 0
    # The lag monitor's own task was cancelled when the block ended.
    assert _finished(_samples(metrics), "monitor", "cancelled") == 1


@pytest.mark.asyncio
async def test_an_unhandled_task_error_is_logged_with_its_task_and_counted(
    log_output: io.BytesIO,
) -> None:
    """Counting a failure does not mark it retrieved: the loop's handler still sees it, logs
    one line naming the task, and counts it."""
    metrics = _metrics()
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()

    async def fail() -> None:
        raise RuntimeError("nobody awaits me")

    async with monitoring(metrics, lag_interval=0.05):
        task = asyncio.create_task(fail(), name="pipeline:lost")
        await asyncio.sleep(0.01)
        assert task.done()
        del task
        gc.collect()
        await asyncio.sleep(0)
        samples = _samples(metrics)
        assert _finished(samples, "pipeline", "failed") == 1
        assert samples["service_asyncio_unhandled_exceptions_total"] == 1
        # A callback that raises: no task, the handle instead.
        loop.call_soon(operator.truediv, 1, 0)
        await asyncio.sleep(0.01)
        assert _samples(metrics)["service_asyncio_unhandled_exceptions_total"] == 2
    assert loop.get_exception_handler() is before  # put back at the end
    log.sink().flush()
    lines = [json.loads(raw) for raw in log_output.getvalue().splitlines()]
    lost, callback = [line for line in lines if line["level"] == "error"]
    assert lost["event"] == "Task exception was never retrieved"
    assert (lost["task"], lost["group"]) == ("pipeline:lost", "pipeline")
    assert "RuntimeError: nobody awaits me" in lost["exception"]
    assert "truediv" in callback["handle"]
    assert "ZeroDivisionError" in callback["exception"]


@pytest.mark.asyncio
async def test_loop_lag_records_a_blocked_loop() -> None:
    metrics = _metrics()
    async with monitoring(metrics, lag_interval=0.02):
        await asyncio.sleep(0.05)
        before = metrics.loop_lag.labels().sum
        time.sleep(0.3)  # block the loop on purpose
        await asyncio.sleep(0.06)
        child = metrics.loop_lag.labels()
    assert child.sum - before >= 0.2
    samples = _samples(metrics)
    # At least one wake-up was later than 0.25 s, none of the idle ones were.
    assert (
        samples["service_event_loop_lag_seconds_count"]
        - samples['service_event_loop_lag_seconds_bucket{le="0.25"}']
        >= 1
    )
    assert samples['service_event_loop_lag_seconds_bucket{le="0.1"}'] >= 2


@pytest.mark.asyncio
async def test_task_dump_names_group_state_coroutine_and_frame() -> None:
    release = asyncio.Event()

    async def parked() -> None:
        await release.wait()

    task = asyncio.create_task(parked(), name="pipeline:sink")
    await asyncio.sleep(0)
    rows = {row["name"]: row for row in task_dump(_metrics().task_groups)}
    release.set()
    await task
    row = rows["pipeline:sink"]
    assert row["group"] == "pipeline"
    assert row["state"] == "pending"
    assert row["coroutine"].endswith("parked")
    assert "test_monitor.py" in row["top_frame"]
    assert " in parked" in row["top_frame"]
    current = [r for r in rows.values() if r["state"] == "running"]
    assert len(current) == 1


def test_debug_mode_logs_a_slow_callback_with_its_source(log_output: io.BytesIO) -> None:
    """configure_debug: asyncio's debug mode on, callbacks over the threshold logged."""

    async def main() -> None:
        configure_debug(asyncio.get_running_loop(), True, slow_callback_ms=20)
        assert asyncio.get_running_loop().get_debug()
        await asyncio.sleep(0)  # the next step runs under debug mode's timing
        time.sleep(0.06)  # blocks the loop: the step that runs this is a slow callback

    with asyncio.Runner() as runner:
        runner.run(main())
    log.sink().flush()
    lines = [json.loads(raw) for raw in log_output.getvalue().splitlines()]
    slow = [line for line in lines if line.get("logger") == "asyncio" and "took" in line["event"]]
    assert slow, lines
    assert "test_debug_mode_logs_a_slow_callback" in slow[0]["event"]  # names the coroutine


def test_debug_mode_off_logs_no_slow_callback(log_output: io.BytesIO) -> None:
    async def main() -> None:
        configure_debug(asyncio.get_running_loop(), False, slow_callback_ms=20)
        await asyncio.sleep(0)
        time.sleep(0.06)

    with asyncio.Runner() as runner:
        runner.run(main())
    log.sink().flush()
    assert b"took" not in log_output.getvalue()
