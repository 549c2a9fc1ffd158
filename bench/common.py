"""What every benchmark needs: free ports, core pinning, CPU time, a pinned server process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.process import free_port, stop_process

__all__ = ["free_port"]  # the benchmarks take it from here with the rest

ROOT = Path(__file__).resolve().parent.parent


def loopback_env(ports: Mapping[str, int], sink: Path) -> dict[str, str]:
    """The service's settings for a benchmark: HTTP, TCP and admin on loopback at
    ``ports``, JSON logs, the pipeline's sink at ``sink``."""
    env = {"SERVICE_LOG__FORMAT": "json", "SERVICE_PIPELINE__SINK_PATH": str(sink)}
    for listener in ("http", "tcp", "admin"):
        env[f"SERVICE_{listener.upper()}__HOST"] = "127.0.0.1"
        env[f"SERVICE_{listener.upper()}__PORT"] = str(ports[listener])
    return env


def pin(core: int) -> list[str]:
    """``taskset -c core`` when the machine has the cores and the tool, else nothing."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > core:
        return ["taskset", "-c", str(core)]
    return []


def stat_fields(pid: int) -> list[str]:
    """The fields of Linux's ``/proc/PID/stat`` after the command name: state first."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Until ``url`` answers 200 (or the process dies, or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not answer {url} in {timeout}s")


def wait_pong(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Until a ``PING`` line on ``port`` gets a line back."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\n")
                if s.recv(100).endswith(b"\n"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port} in {timeout}s")


@contextmanager
def pinned_server(
    cmd: list[str],
    ready: Callable[[subprocess.Popen[bytes]], None],
    env: dict[str, str],
    log_path: Path,
) -> Iterator[subprocess.Popen[bytes]]:
    """``cmd`` on core 0, output to ``log_path``; yields once ``ready(proc)`` returns.

    taskset execs the server, so the pid is the server's own (for ``cpu_seconds``).
    """
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [*pin(0), *cmd], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
        try:
            ready(proc)
            yield proc
        finally:
            stop_process(proc, 15)


def stop_service(proc: subprocess.Popen[bytes], log_path: Path) -> tuple[int, dict[str, Any]]:
    """SIGTERM a service and wait; its exit code and its ``shutdown complete`` line."""
    code = stop_process(proc, 30)
    summary: dict[str, Any] = {}
    for raw in log_path.read_bytes().splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("event") == "shutdown complete":
            summary = line
    return code, summary
