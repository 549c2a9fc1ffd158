"""Start order, signals and the numbered shutdown steps.

aiohttp's ``run_app`` decides shutdown by itself (its ``shutdown_timeout`` can
wait twice its value and never stops executors), so the service owns the
sequence: every step has its own bound, and the total is at most
``readiness_delay + grace_seconds + drain_seconds + 2 * cancel_seconds`` plus
a little scheduling, which is what the compose ``stop_grace_period`` and the
k8s ``terminationGracePeriodSeconds`` are sized from.

Components join the sequence through ``service.runtime.state`` (listeners,
drains, summary sources, readiness checks, core tasks); this module never
needs to know what they are, nor which service it runs: :func:`run_service`
takes the service's app factory.

When a core component fails (``ServiceState.fail``: a pipeline stage worker,
the sink writer or the TCP server's sweeper died of an unexpected
exception), the service logs one error line saying which and why ("a core
component failed: shutting down, exit code 1"), runs the same shutdown
steps, and exits with code 1, so that the orchestrator restarts it.

The admin listener runs on its own thread (``service.runtime.admin``), so it
answers while the loop is blocked; it starts before the other listeners and
closes last. At exit
the log writer thread gets ``log.exit_flush_seconds`` to write what is left
(``service.runtime.log.writer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from service.runtime import gctune, offload
from service.runtime.admin import AdminServer, create_admin_app
from service.runtime.appkit import AppFactory
from service.runtime.config import RuntimeSettings
from service.runtime.http.listener import HttpListener
from service.runtime.keys import HTTP_MIDDLEWARE
from service.runtime.log import exit_at_once, flushing, get_logger, sink
from service.runtime.loop import run_loop
from service.runtime.metrics import Metrics
from service.runtime.monitor import configure_debug
from service.runtime.state import ServiceState
from service.runtime.workers.count import worker_count
from service.runtime.workers.link import WorkerLink

log = get_logger("service.lifecycle")

# Exit codes: 0 clean, 1 acknowledged work was lost, a core component failed
# (ServiceState.fail) or a forced exit, 2 bad config.
EXIT_OK, EXIT_LOST, EXIT_CONFIG = 0, 1, 2


class Service:
    """One running service: the public app, the admin app and the registered listeners."""

    def __init__(self, settings: RuntimeSettings, create_app: AppFactory) -> None:
        self.settings = settings
        self.metrics = Metrics(settings.metrics.namespace)
        self.metrics.register_task_group("lifecycle")
        self.state = ServiceState()
        self.app = create_app(settings, metrics=self.metrics, state=self.state)
        self.admin = create_admin_app(self.app)
        self.admin_server = AdminServer(self.admin, settings.admin.host, settings.admin.port)
        self.http = HttpListener(
            self.app,
            settings.http,
            header_timeouts=self.metrics.http_header_timeouts.labels(),
            in_flight=self.metrics.http_in_flight.labels(),
            middleware=self.app.get(HTTP_MIDDLEWARE),
            body_timeouts=self.metrics.http_body_timeouts.labels(),
            connections_rejected=self.metrics.http_connections_rejected.labels(),
        )
        self.stopping = asyncio.Event()
        # A worker of a supervisor says "worker listening": "listening" is the supervisor's.
        self.listening_event = "listening"
        self._signals = 0
        self.state.failure_hooks.append(self._on_failure)
        self.metrics.before_collect.append(self._count_dropped_logs)

    # -- signals ----------------------------------------------------------
    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("signal received: shutting down", signal=sig.name)
            self.stopping.set()
            return
        # A second signal means "now": no more waiting on anything.
        log.warning("second signal: exiting at once", signal=sig.name)
        exit_at_once(EXIT_LOST, self.settings.log.exit_flush_seconds)

    def _count_dropped_logs(self) -> None:
        self.metrics.log_dropped.labels().value = float(sink().dropped)

    def _on_failure(self, reason: str, exc: BaseException | None) -> None:
        log.error(
            "a core component failed: shutting down, exit code 1", reason=reason, exc_info=exc
        )
        self.stopping.set()

    def request_stop(self, reason: str) -> None:
        """Begin the shutdown as a first signal does, without counting as one."""
        if not self.stopping.is_set():
            log.info("shutting down", reason=reason)
            self.stopping.set()

    def exit_now(self, reason: str) -> None:
        """What a second signal does: write the log and exit 1 at once."""
        log.warning("exiting at once", reason=reason)
        exit_at_once(EXIT_LOST, self.settings.log.exit_flush_seconds)

    # -- start --------------------------------------------------------------
    async def start(self) -> dict[str, int]:
        """Start: resources, admin, other listeners, HTTP, ready; return the bound ports."""
        s = self.settings
        loop = asyncio.get_running_loop()
        configure_debug(loop, s.loop.debug, s.loop.slow_callback_ms)
        # Resources start here: the app's cleanup contexts run in order.
        await self.http.setup()
        ports = {"admin": await self.admin_server.start()}
        for listener in self.state.listeners:
            addresses = await listener.start()
            ports[listener.name] = addresses[0][1]
        ports["http"] = (await self.http.start())[0][1]
        self.state.ready = True
        self.metrics.ready_child.set(1)
        log.info(
            self.listening_event,
            **{f"{name}_port": port for name, port in ports.items()},
            loop=type(loop).__module__.split(".")[0],
        )
        return ports

    # -- stop ---------------------------------------------------------------
    async def shutdown(self) -> int:
        """The numbered shutdown steps (docs/contract.md); returns the exit code."""
        s = self.settings.shutdown
        loop = asyncio.get_running_loop()
        began = loop.time()

        # 1. Not ready: /readyz answers 503 from now on; keep serving through the
        #    readiness delay so load balancers stop sending before we stop taking.
        self.state.ready = False
        self.metrics.ready_child.set(0)
        log.info("shutdown step 1: not ready", readiness_delay=s.readiness_delay)
        if s.readiness_delay:
            await asyncio.sleep(s.readiness_delay)

        # 2. Stop accepting: close the listening sockets; responses now carry
        #    "Connection: close", new events get 503 and TCP clients "BYE shutdown".
        self.state.draining = True
        for listener in (self.http, *self.state.listeners):
            await _guarded(listener.stop_accepting(), f"{listener.name}: stop accepting")
        log.info("shutdown step 2: listeners closed")

        # 3. In-flight HTTP requests and TCP answers finish, within the grace period.
        await asyncio.gather(
            *(
                _guarded(lst.finish(s.grace_seconds), f"{lst.name}: finish")
                for lst in (self.http, *self.state.listeners)
            )
        )
        log.info("shutdown step 3: in-flight work finished", seconds=round(loop.time() - began, 3))

        # 4. Drain: everything acknowledged reaches durable storage.
        for drain in self.state.drains:
            await _guarded(
                drain.drain(s.drain_seconds),
                f"{drain.name}: drain",
                timeout=s.drain_seconds + s.cancel_seconds,
            )
        log.info("shutdown step 4: drained")

        # 5. Cancel what is left (each task's cleanup runs), then close the
        #    resources: the app's cleanup contexts, in reverse start order.
        cancelled = await self._cancel_remaining(s.cancel_seconds)
        await _guarded(self.http.cleanup(), "close resources", timeout=s.cancel_seconds)

        # 6. Summary and exit code; the admin listener goes last so the final
        #    state can still be scraped until here.
        counts: dict[str, int] = {"tasks_cancelled": cancelled}
        for source in (*(d.summary for d in self.state.drains), *self.state.summaries):
            for key, value in source().items():
                counts[key] = counts.get(key, 0) + value
        failure = self.state.failure
        code = EXIT_LOST if counts.get("dropped", 0) or failure else EXIT_OK
        log.info(
            "shutdown complete",
            exit_code=code,
            seconds=round(loop.time() - began, 3),
            **counts,
            **({"failure": failure} if failure else {}),
        )
        await _guarded(self.admin_server.close(), "close admin", timeout=s.cancel_seconds)
        return code

    async def _cancel_remaining(self, timeout: float) -> int:
        """Cancel every task but this one and the admin server's; wait for their cleanup."""
        current = asyncio.current_task()
        group_of = self.metrics.task_groups.of
        tasks = [t for t in asyncio.all_tasks() if t is not current and group_of(t) != "http"]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.warning("task did not finish after cancel", task=task.get_name())
        return len(tasks)


async def _guarded(aw: Any, what: str, timeout: float | None = None) -> None:
    """Run one shutdown step; log (never raise) its failure, so later steps still run."""
    try:
        async with asyncio.timeout(timeout):
            await aw
    except TimeoutError:
        log.error("shutdown step timed out", step=what, timeout=timeout)  # noqa: TRY400
    except Exception:
        log.exception("shutdown step failed", step=what)


async def serve(service: Service, link: WorkerLink | None = None) -> int:
    """Run ``service`` until SIGTERM or SIGINT; return the exit code.

    ``link``: this process is a worker of a supervisor (``service.runtime.workers``).
    """
    service.install_signal_handlers()
    started = time.monotonic()
    try:
        ports = await service.start()
    except OSError as exc:
        # A port in use or an address that cannot be bound: a configuration
        # problem, so the same exit code as bad settings.
        log.error("cannot start", error=str(exc))  # noqa: TRY400 - one line, no traceback
        await service._cancel_remaining(service.settings.shutdown.cancel_seconds)
        with contextlib.suppress(Exception):
            await service.http.cleanup()
            async with asyncio.timeout(service.settings.shutdown.cancel_seconds):
                await service.admin_server.close()
        return EXIT_CONFIG
    log.debug("started", seconds=round(time.monotonic() - started, 3))
    if link is not None:
        link.started(ports, stop=service.request_stop, now=service.exit_now)
    await service.stopping.wait()
    return await service.shutdown()


def run_service(
    settings: RuntimeSettings,
    create_app: AppFactory,
    customize: Callable[[Service], None] | None = None,
) -> int:
    """Run the service on the configured loop until it stops; return the exit code.

    ``customize`` may add routes or components to the service before it
    starts (test apps use it); logging must already be configured. With
    ``workers.count`` other than 1 this process becomes the supervisor of
    that many workers, each of which runs this same command line
    (``service.runtime.workers``).
    """
    link = WorkerLink.from_env()
    if link is None:
        count = worker_count(settings.workers.count)
        if count > 1:
            from service.runtime.workers.supervisor import supervise

            return supervise(settings, count)
    gctune.tune()

    async def main() -> int:
        service = Service(settings, create_app)
        if customize is not None:
            customize(service)
        if link is not None:
            service.listening_event = "worker listening"
            link.prepare(service.admin, service.state)
        return await serve(service, link)

    try:
        logs = settings.log
        code = run_loop(
            flushing(main(), logs.flush_interval, logs.buffer_bytes, logs.exit_flush_seconds),
            settings.loop.kind,
            settings.loop.debug,
        )
    finally:
        sink().flush()
    if offload.abandoned_jobs():
        # Threads still run jobs that shutdown abandoned, and the interpreter
        # would join them at exit (concurrent.futures registers that): leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
