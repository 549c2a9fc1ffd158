"""Running a plan in this process or in ``--workers`` processes; live progress.

One Python process saturates one core; ``--workers N`` runs N spawned
processes, each with its share of the connections (and of the rate), and
merges their encoded histograms. Workers connect first, report ready, and all
start on one "go" from the parent, so their measured windows line up.
Progress counters travel through a small shared array, results through a pipe.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import sys
import time
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait as wait_pipes
from typing import Any, TextIO

from service.runtime.loop import run_loop
from service.tools.loadtest import scenarios
from service.tools.loadtest.driver import Driver
from service.tools.loadtest.plan import Plan
from service.tools.loadtest.report import to_wire

STARTUP_SECONDS = 30.0  # spawning, importing and connecting a worker


class WorkerFailed(RuntimeError):
    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"load-test worker {index} failed: {reason}")
        self.index = index


class Progress:
    """``elapsed, rate, errors`` once a second on stderr, only when it is a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.t_start = time.monotonic()
        self.t_last = self.t_start
        self.last_done = 0

    def update(self, done: int, errors: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.t_last < 1.0:
            return
        rate = (done - self.last_done) / (now - self.t_last)
        self.t_last, self.last_done = now, done
        self.stream.write(
            f"\r{now - self.t_start:6.1f} s  {rate:12,.0f} req/s  "
            f"{done:12,} done  {errors:8,} errors "
        )
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.t_last > self.t_start:
            self.stream.write("\n")
            self.stream.flush()


def _errors(driver: Driver) -> int:
    return sum(driver.m.errors.values())


def run_local(
    plan: Plan, loop: str = "uvloop", progress: Progress | None = None
) -> list[dict[str, Any]]:
    """The whole plan in this process (one worker)."""

    def on_tick(driver: Driver) -> None:
        if progress is not None:
            progress.update(driver.completed, _errors(driver))

    driver = Driver(plan, scenarios.build(plan), on_tick)
    measured = run_loop(driver.run(), loop)
    return [to_wire(measured)]


def _child(plan: Plan, pipe: Pipe, counters: Any, index: int, loop: str) -> None:
    """A worker process: connect, say ready, wait for go, run, send the result."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C

    async def ready() -> None:
        pipe.send(("ready", None))
        # A blocking recv in a thread: the go signal comes once, within seconds.
        await asyncio.to_thread(pipe.recv)

    def on_tick(driver: Driver) -> None:
        counters[2 * index] = driver.completed
        counters[2 * index + 1] = _errors(driver)

    driver = Driver(plan, scenarios.build(plan), on_tick)
    measured = run_loop(driver.run(ready), loop)
    pipe.send(("result", to_wire(measured)))
    pipe.close()


def run_workers(
    plan: Plan, loop: str = "uvloop", progress: Progress | None = None
) -> list[dict[str, Any]]:
    """The plan split over ``plan.workers`` spawned processes, results merged by the caller."""
    # spawn, not fork: the parent may have threads (tests do), and fork copies locks.
    ctx = multiprocessing.get_context("spawn")
    plans = plan.split()
    counters = ctx.Array("q", 2 * len(plans), lock=False)
    procs, pipes = [], []
    try:
        for i, part in enumerate(plans):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=_child,
                args=(part, child_end, counters, i, loop),
                name=f"loadtest-worker-{i}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            procs.append(proc)
            pipes.append(parent_end)
        for i, pipe in enumerate(pipes):
            if not pipe.poll(STARTUP_SECONDS + plan.timeout):
                raise WorkerFailed(i, "not ready in time")
            _expect(i, pipe, "ready")
        for pipe in pipes:
            pipe.send("go")
        return _collect(plan, pipes, counters, progress)
    finally:
        for proc in procs:
            proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _collect(
    plan: Plan, pipes: list[Pipe], counters: Any, progress: Progress | None
) -> list[dict[str, Any]]:
    limit = None
    if plan.duration is not None:
        limit = time.monotonic() + plan.warmup + plan.duration + plan.grace + 10.0
    results: dict[int, dict[str, Any]] = {}
    while len(results) < len(pipes):
        waiting = [p for i, p in enumerate(pipes) if i not in results]
        for pipe in wait_pipes(waiting, timeout=0.2):
            assert isinstance(pipe, Pipe)
            i = pipes.index(pipe)
            results[i] = _expect(i, pipe, "result")
        if progress is not None:
            progress.update(sum(counters[0::2]), sum(counters[1::2]))
        if limit is not None and time.monotonic() > limit:
            raise WorkerFailed(min(set(range(len(pipes))) - set(results)), "no result in time")
    return [results[i] for i in range(len(pipes))]


def _expect(index: int, pipe: Pipe, what: str) -> Any:
    try:
        kind, payload = pipe.recv()
    except EOFError:
        raise WorkerFailed(index, "exited early (see its traceback above)") from None
    if kind != what:
        raise WorkerFailed(index, f"sent {kind!r}, expected {what!r}")
    return payload
