"""The supervisor of ``service serve --workers N``: N copies of the service on the same ports.

Each worker is the whole service (HTTP, TCP, pipeline) in its own process,
started as this same command line with ``SERVICE_WORKER`` set (the worker's
side is :mod:`.link`); the supervisor serves no traffic. Home-made, because
gunicorn's arbiter does not keep what this service promises: SIGINT is its
quick shutdown (no drain), it exits 0 whatever its workers' exit codes, it
restarts a crashed worker at once every time and halts only on its own
"failed to boot" code, a second SIGTERM does not cut its stop short, and it
binds HTTP addresses only (no TCP line port, no one metrics port).

**Ports.** For each worker and listener (``http``, ``tcp``) the supervisor
binds one socket, all on the same port with ``SO_REUSEPORT``, and hands
worker k its own. The kernel spreads new connections over them by a hash of
the addresses. One shared socket would not: the first worker to wake accepts
a whole burst (32 of 32 connections, measured). A worker's sockets stay open
here while it is replaced, so connections that hash to it wait in the
backlog instead of being refused. A plain bind first checks that the port is
free, so a port in use is exit 2 as with one process (``SO_REUSEPORT`` alone
would share it with whoever else set it).

**Workers** get a loopback admin port of their own (scraped: :mod:`.admin`),
with the file sink a file of their own (``events.w1.jsonl``...), and a
process group of their own: a terminal's Ctrl-C reaches the supervisor only.

**Restarts.** A worker that exits on its own is started again after
``workers.backoff_seconds``, doubled for each failure in a row; one that
lived ``workers.stable_seconds`` starts the count afresh. ``workers.crash_limit``
failures in a row: a crash loop, the supervisor stops the others and exits 1.
A worker that exits 2 (bad config) before it was ever ready: exit 2 at once.

**Signals.** The first SIGTERM or SIGINT closes the supervisor's copies of
the listening sockets and tells every worker ``stop`` over its control
socket (a word, not the signal: :mod:`.link` says why); each runs its
numbered shutdown steps, and the supervisor exits 0 only if every worker
exited 0. Workers still running after their whole shutdown budget plus
:data:`STOP_SLACK` are killed (exit 1). A second signal tells the workers
``now`` (they exit at once) and the supervisor exits 1 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

import aiohttp
import orjson
from aiohttp import web

from service.runtime.config import RuntimeSettings
from service.runtime.log import exit_at_once, flushing, get_logger, sink
from service.runtime.loop import run_loop
from service.runtime.workers.admin import SCRAPE_TIMEOUT, create_supervisor_admin
from service.runtime.workers.link import worker_env
from service.runtime.workers.slots import Slot

log = get_logger("service.supervisor")

EXIT_OK, EXIT_LOST, EXIT_CONFIG = 0, 1, 2
LISTENERS = ("http", "tcp")
# The words to a worker (service.runtime.workers.link): shut down, exit at once.
STOP, NOW = b"stop\n", b"now\n"
STOP_SLACK = 5.0  # seconds past the workers' own shutdown budget


class Supervisor:
    """The supervisor of ``count`` workers, each running ``argv``; :meth:`run` until stopped."""

    def __init__(self, settings: RuntimeSettings, count: int, argv: Sequence[str]) -> None:
        self.settings = settings
        self.argv = list(argv)
        self.namespace = settings.metrics.namespace
        self.slots = [Slot(index) for index in range(1, count + 1)]
        self.listeners = list(LISTENERS)
        self.ports: dict[str, int] = {}
        self.session: aiohttp.ClientSession | None = None
        self.stopping = asyncio.Event()
        self.code: int | None = None  # decided before the stop (crash loop, bad config)
        self._signals = 0
        self._announced = False

    # -- start --------------------------------------------------------------
    def _bind(self) -> None:
        for name in LISTENERS:
            s = getattr(self.settings, name)
            port = s.port
            family = socket.getaddrinfo(s.host, port, type=socket.SOCK_STREAM)[0][0]
            if port:  # in use by anyone: refuse, as a single process would
                socket.create_server((s.host, port), family=family).close()
            for slot in self.slots:
                sock = socket.create_server(
                    (s.host, port), family=family, backlog=s.backlog, reuse_port=True
                )
                port = sock.getsockname()[1]  # port 0: the first socket picks it for all
                slot.sockets[name] = sock
            self.ports[name] = port

    def _close_sockets(self, names: Sequence[str] = LISTENERS) -> None:
        for slot in self.slots:
            for name in names:
                sock = slot.sockets.pop(name, None)
                if sock is not None:
                    sock.close()

    async def run(self) -> int:
        runner = web.AppRunner(create_supervisor_admin(self), access_log=None, handle_signals=False)
        admin = self.settings.admin
        try:
            self._bind()
            await runner.setup()
            await web.TCPSite(runner, admin.host, admin.port, reuse_address=True).start()
        except OSError as exc:
            log.error("cannot start", error=str(exc))  # noqa: TRY400 - one line, no traceback
            self._close_sockets()
            await runner.cleanup()
            return EXIT_CONFIG
        self.ports["admin"] = runner.addresses[0][1]
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        tasks = [
            asyncio.create_task(self._keep(slot), name=f"supervisor:worker-{slot.index}")
            for slot in self.slots
        ]
        await self.stopping.wait()
        s = self.settings.shutdown
        budget = s.readiness_delay + s.grace_seconds + s.drain_seconds + 2 * s.cancel_seconds
        _, pending = await asyncio.wait(tasks, timeout=budget + STOP_SLACK)
        if pending:
            late = [slot.index for slot in self.slots if slot.alive]
            log.error("workers did not stop in time: killing them", workers=late)
            self._kill_workers()
            await asyncio.wait(pending)
        clean = all(slot.final in (None, 0) for slot in self.slots)
        code = self.code if self.code is not None else (EXIT_OK if clean else EXIT_LOST)
        log.info(
            "shutdown complete",
            exit_code=code,
            workers={str(slot.index): slot.final for slot in self.slots},
        )
        await self.session.close()
        await runner.cleanup()
        return code

    # -- workers ------------------------------------------------------------
    async def _keep(self, slot: Slot) -> None:
        """Run worker ``slot`` until the stop, starting it again when it exits."""
        try:
            await self._keep_running(slot)
        except Exception as exc:
            log.exception("worker could not be started", worker=slot.index)
            self._fail(EXIT_LOST, f"worker {slot.index} could not be started: {exc}")

    async def _keep_running(self, slot: Slot) -> None:
        w = self.settings.workers
        while not self.stopping.is_set():
            proc = await self._spawn(slot)
            code = await proc.wait()
            lived = time.monotonic() - slot.started
            slot.state = "exited"
            if self.stopping.is_set():
                slot.final = code
                return
            log.warning(
                "worker exited",
                worker=slot.index,
                pid=proc.pid,
                exit_code=code,
                seconds=round(lived, 3),
            )
            if code == EXIT_CONFIG and not slot.ever_ready:
                self._fail(EXIT_CONFIG, f"worker {slot.index} could not start (exit code 2)")
                return
            slot.failures = (0 if lived >= w.stable_seconds else slot.failures) + 1
            if slot.failures >= w.crash_limit:
                self._fail(
                    EXIT_LOST,
                    f"crash loop: worker {slot.index} exited {slot.failures} times in a row, "
                    f"each within {w.stable_seconds:g}s of its start (last exit code {code})",
                )
                return
            slot.state = "backoff"
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(w.backoff_seconds * 2 ** (slot.failures - 1)):
                    await self.stopping.wait()
            if not self.stopping.is_set():
                slot.restarts += 1

    async def _spawn(self, slot: Slot) -> asyncio.subprocess.Process:
        parent, child = socket.socketpair()
        fds = {name: slot.sockets[name].fileno() for name in self.listeners}
        env = {**os.environ, **worker_env(self.settings, slot.index, child.fileno(), fds)}
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=[child.fileno(), *fds.values()],
                process_group=0,  # a terminal's Ctrl-C reaches the supervisor only
            )
        finally:
            child.close()
        slot.proc, slot.started, slot.state, slot.ports = proc, time.monotonic(), "starting", {}
        slot.control = parent
        parent.setblocking(False)
        loop = asyncio.get_running_loop()
        loop.add_reader(parent.fileno(), self._on_control, slot, parent, bytearray())
        if self.stopping.is_set():  # the stop began while it was being started
            self._tell(slot, STOP)
        return proc

    def _on_control(self, slot: Slot, sock: socket.socket, pending: bytearray) -> None:
        """The worker's line "listening on these ports"; end-of-file when it exits."""
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
            if slot.control is sock:
                slot.control = None
            return
        pending += data
        if not pending.endswith(b"\n"):
            return
        message, pending[:] = orjson.loads(pending), b""
        slot.ports = {k: int(v) for k, v in message["ports"].items()}
        slot.state, slot.ever_ready = "ready", True
        if not self._announced and all(x.ever_ready for x in self.slots):
            self._announce()

    def _announce(self) -> None:
        """Every worker is listening: drop listeners the service does not have, say "listening"."""
        self._announced = True
        unused = [name for name in self.listeners if name not in self.slots[0].ports]
        self._close_sockets(unused)
        self.listeners = [name for name in self.listeners if name not in unused]
        log.info(
            "listening",
            **{f"{name}_port": self.ports[name] for name in (*self.listeners, "admin")},
            workers=len(self.slots),
        )

    # -- stop -----------------------------------------------------------------
    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("signal received: stopping the workers", signal=sig.name)
            self._stop()
            return
        log.warning("second signal: exiting at once", signal=sig.name)
        for slot in self.slots:
            self._tell(slot, NOW)
        exit_at_once(EXIT_LOST, self.settings.log.exit_flush_seconds)

    def _fail(self, code: int, message: str) -> None:
        if self.stopping.is_set():
            return  # already stopping: this is not news
        log.error(message)
        self.code = code
        self._stop()

    def _stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        self._close_sockets()  # each worker still holds its own until its step 2
        for slot in self.slots:
            self._tell(slot, STOP)

    def _tell(self, slot: Slot, message: bytes) -> None:
        if slot.control is not None:
            # A word in an empty socket buffer: it never blocks. A worker that
            # is still starting reads it once it listens, then stops.
            with contextlib.suppress(OSError):
                slot.control.send(message)

    def _kill_workers(self) -> None:
        # Only processes not yet reaped: their pids cannot have been reused.
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.kill()


def supervise(settings: RuntimeSettings, count: int, argv: Sequence[str] | None = None) -> int:
    """Run ``count`` workers of this command line (``argv``) until stopped; the exit code."""
    command = argv or [sys.executable, *sys.orig_argv[1:]]

    async def main() -> int:
        return await Supervisor(settings, count, command).run()

    try:
        # The stdlib loop: the supervisor is not on any request's path, and
        # asyncio's subprocess support takes every Popen argument.
        logs = settings.log
        return run_loop(
            flushing(main(), logs.flush_interval, logs.buffer_bytes, logs.exit_flush_seconds),
            "asyncio",
        )
    finally:
        sink().flush()
