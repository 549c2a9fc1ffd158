"""One worker place of the supervisor: its sockets, its current process, its history."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field


@dataclass
class Slot:
    """Worker ``index`` (1..N): the process now running in it, and what happened before."""

    index: int
    # The listening sockets bound for this worker, by listener name; they stay
    # open in the supervisor across restarts, so the port never closes.
    sockets: dict[str, socket.socket] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    # starting -> ready -> exited; backoff while waiting to start again.
    state: str = "starting"
    ports: dict[str, int] = field(default_factory=dict)  # as the worker reported them
    started: float = 0.0  # monotonic
    ever_ready: bool = False
    restarts: int = 0
    failures: int = 0  # exits in a row, each soon after the start
    # The supervisor's end of the control socket pair, while the process lives.
    control: socket.socket | None = None
    # The exit code of the process that was running when the stop began (None: none was).
    final: int | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started if self.alive else 0.0

    def describe(self) -> dict[str, object]:
        return {
            "worker": self.index,
            "pid": self.pid if self.alive else None,
            "state": self.state,
            "restarts": self.restarts,
            "uptime_seconds": round(self.uptime, 3),
            "admin_port": self.ports.get("admin") if self.state == "ready" else None,
        }
