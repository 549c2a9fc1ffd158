"""A real ``redis-server`` per test: own port, own data directory, stoppable and restartable.

Tests stop and start it to play an outage; a restart keeps the port and the
data directory, and with ``appendonly`` the data, like a Redis host reboot.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from tests.support.process import free_port, require_tool, stop_process


class RedisServer:
    """``redis-server`` on ``127.0.0.1:<port>`` with its files in ``directory``."""

    def __init__(
        self, directory: Path, *, appendonly: bool = True, port: int | None = None
    ) -> None:
        self.binary = require_tool("redis-server")
        self.directory = directory
        self.appendonly = appendonly
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.directory / "redis.log"
                raise AssertionError(
                    f"redis-server did not start:\n{log.read_text() if log.exists() else ''}"
                )
            time.sleep(0.02)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM (Redis fsyncs its append-only file on the way out) and wait."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stream_entries(server: RedisServer, stream: str) -> list[tuple[str, dict[str, Any]]]:
    """Every entry of ``stream`` as ``(id field, event object)``, in stream order."""
    client = server.client()
    try:
        out: list[tuple[str, dict[str, Any]]] = []
        start = "-"
        while True:
            chunk: Any = client.xrange(stream, min=start, count=10_000)
            if not chunk:
                return out
            for _, fields in chunk:
                out.append((fields[b"id"].decode(), json.loads(fields[b"event"])))
            last = chunk[-1][0].decode()
            start = f"({last}"
    finally:
        client.close()
