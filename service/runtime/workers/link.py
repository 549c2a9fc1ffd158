"""The worker's side of the supervisor: its inherited sockets and its control channel.

The supervisor (:mod:`.supervisor`) starts each worker as the same command
line with ``SERVICE_WORKER`` set to a small JSON object: the worker's number,
the descriptor of its end of a control socket pair, and the descriptors of
the listening sockets it inherits, by listener name (``http``, ``tcp``),
which go to :mod:`service.runtime.inherited` for the listeners to take.

Over the control socket the worker sends one JSON line when it is listening
(its pid and ports, its admin port among them: the supervisor scrapes its
``/metrics`` there). The supervisor sends a word: ``stop`` when it stops (the
worker shuts down as on a first signal), ``now`` on its second signal (the
worker exits at once, as on its own second signal). Words, not signals: a
worker may get the signal itself as well (systemd signals a whole cgroup),
and the two must not count as a second signal. End-of-file means the
supervisor is gone (killed with SIGKILL, say): the worker shuts down too
instead of living on alone.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson
import structlog
from aiohttp import web

from service.runtime import inherited
from service.runtime.admin import livez as admin_livez
from service.runtime.config import ENV_PREFIX, ENV_WORKER, RuntimeSettings
from service.runtime.http import health
from service.runtime.log import get_logger, sink
from service.runtime.state import ServiceState

log = get_logger("service.workers")


def worker_path(path: Path, index: int) -> Path:
    """Worker ``index``'s file next to ``path``: ``events.jsonl`` -> ``events.w1.jsonl``."""
    return path.with_name(f"{path.stem}.w{index}{path.suffix}")


def worker_env(
    settings: RuntimeSettings, index: int, control: int, sockets: Mapping[str, int]
) -> dict[str, str]:
    """The environment that makes a process worker ``index`` (the supervisor's side).

    Besides ``SERVICE_WORKER``, the settings that differ from the supervisor's:
    the admin listener on a loopback port of its own, and a sink file of its own.
    """
    spec = {"index": index, "control": control, "sockets": dict(sockets)}
    return {
        ENV_WORKER: orjson.dumps(spec).decode(),
        f"{ENV_PREFIX}ADMIN__HOST": "127.0.0.1",
        f"{ENV_PREFIX}ADMIN__PORT": "0",
        f"{ENV_PREFIX}PIPELINE__SINK_PATH": str(worker_path(settings.pipeline.sink_path, index)),
    }


@dataclass
class WorkerLink:
    """This process is worker ``index`` of a supervisor."""

    index: int
    control: socket.socket

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> WorkerLink | None:
        """The link described by ``SERVICE_WORKER``; ``None`` when this is not a worker."""
        raw = environ.get(ENV_WORKER)
        if not raw:
            return None
        spec = orjson.loads(raw)
        fds = [spec["control"], *spec["sockets"].values()]
        for fd in fds:
            # Not for this worker's own children (a process pool, a subprocess).
            os.set_inheritable(fd, False)
        link = cls(index=int(spec["index"]), control=socket.socket(fileno=spec["control"]))
        inherited.adopt({name: socket.socket(fileno=fd) for name, fd in spec["sockets"].items()})
        # Before the loop starts, so every task's context carries it.
        structlog.contextvars.bind_contextvars(worker=link.index)
        return link

    def prepare(self, admin: web.Application, state: ServiceState) -> None:
        """Before start: whole log lines on a shared pipe, and health routes on the admin app."""
        if _is_pipe(sys.stdout):
            # Every worker writes to the same pipe: writes of at most PIPE_BUF
            # bytes are atomic (POSIX), so lines of two workers never interleave.
            sink().max_write = select.PIPE_BUF
        # This worker's own health, for the supervisor's /workers and for a human.
        admin.router.add_get("/livez", admin_livez, allow_head=False)
        admin.router.add_get("/readyz", health.readyz_handler(state), allow_head=False)

    def started(
        self, ports: dict[str, int], *, stop: Callable[[str], None], now: Callable[[str], None]
    ) -> None:
        """Listening: tell the supervisor; ``stop`` or exit ``now`` when it says so."""
        inherited.close_untaken()  # bound for a listener this service does not have
        message = orjson.dumps({"ports": ports}) + b"\n"
        try:
            self.control.sendall(message)
        except OSError:
            stop("the supervisor is gone")
            return
        self.control.setblocking(False)
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                data = self.control.recv(512)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if b"now" in data:
                now("the supervisor got a second signal")
            elif data:
                stop("the supervisor is stopping")
                return
            loop.remove_reader(self.control.fileno())
            stop("the supervisor is gone")

        loop.add_reader(self.control.fileno(), readable)


def _is_pipe(stream: object) -> bool:
    try:
        mode = os.fstat(stream.fileno()).st_mode  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
