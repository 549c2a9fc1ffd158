"""Helpers shared by the tests: a real service process, free ports, metric parsing."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """The path of a system tool; skip locally (saying why) or fail in CI when missing."""
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI (.ci/run installs it)")
        pytest.skip(f"{name} not installed: `apt-get install` it to run this test")
    return path


def stop_process(
    proc: subprocess.Popen[bytes], timeout: float = 10.0, sig: int = signal.SIGTERM
) -> int:
    """Send ``sig`` (SIGTERM) and wait up to ``timeout``; SIGKILL if it is still there.

    Returns the exit code (negative when a signal ended it, as ``Popen`` says).
    """
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """``python -m service <args>`` in a subprocess, with its JSON log lines collected.

    Ports default to 0 (any free port); :meth:`wait_listening` reads the bound
    ports from the ``listening`` log line.
    """

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        module: str = "service",
        python: str | None = None,
    ) -> None:
        self.args = args
        self.module = module  # e.g. "tests.apps.slow_service" (run from ROOT)
        self.python = python or sys.executable  # another venv's interpreter, if given
        self.env = {**os.environ, "SERVICE_LOG__FORMAT": "json", "PYTHONUNBUFFERED": "1"}
        self.env.update(env or {})
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self._reader: threading.Thread | None = None
        self.ports: dict[str, int] = {}
        self._listening = threading.Event()

    def start(self) -> ServiceProcess:
        self.proc = subprocess.Popen(
            [self.python, "-m", self.module, *self.args],
            env=self.env,
            cwd=self.cwd or (ROOT if self.module != "service" else None),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.raw.append(raw)
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict):
                self.lines.append(line)
                if line.get("event") == "listening":
                    self.ports = {k[:-5]: int(v) for k, v in line.items() if k.endswith("_port")}
                    self._listening.set()

    def wait_listening(self, timeout: float = 15.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"service exited {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"service did not start in {timeout}s:\n{self.output()}")
        return self.ports

    def url(self, path: str = "", listener: str = "http") -> str:
        return f"http://127.0.0.1:{self.ports[listener]}{path}"

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()  # else a ResourceWarning (an error under pytest)
        return code

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in ``timeout`` (and raise)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc, 0, signal.SIGKILL)
            self.wait(5)
            raise

    def output(self) -> str:
        return b"".join(self.raw).decode(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]


_sink_files = itertools.count(1)


def service_env(**overrides: Any) -> dict[str, str]:
    """Environment for a test service: every listener on a free port, loopback only.

    The pipeline's sink is a fresh file under the temp directory, not ./data.
    """
    sink = (
        Path(tempfile.gettempdir())
        / f"service-tests-{os.getpid()}"
        / f"events-{next(_sink_files)}.jsonl"
    )
    env = {
        "SERVICE_HTTP__HOST": "127.0.0.1",
        "SERVICE_HTTP__PORT": "0",
        "SERVICE_TCP__HOST": "127.0.0.1",
        "SERVICE_TCP__PORT": "0",
        "SERVICE_ADMIN__HOST": "127.0.0.1",
        "SERVICE_ADMIN__PORT": "0",
        "SERVICE_PIPELINE__SINK_PATH": str(sink),
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@contextmanager
def running_service(
    args: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    module: str = "service",
    python: str | None = None,
) -> Iterator[ServiceProcess]:
    """A started service (``serve`` unless ``args`` say otherwise), stopped at the end."""
    default_args = ["serve"] if module == "service" else []
    proc = ServiceProcess(
        args if args is not None else default_args,
        env={**service_env(), **(env or {})},
        cwd=cwd,
        module=module,
        python=python,
    )
    proc.start()
    try:
        proc.wait_listening()
        yield proc
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.wait(10)


def http_get(
    url: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def scrape(url: str) -> dict[str, float]:
    """Samples of a /metrics page as {'name{label="v",...}': value}, labels sorted."""
    _, _, body = http_get(url)
    return parse_metrics(body.decode())


def parse_metrics(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def tcp_events_load(
    tcp_port: int,
    seconds: float,
    report: Path,
    *,
    connections: int = 32,
    prefix: Sequence[str] = (),
) -> dict[str, Any]:
    """One closed-loop ``service loadtest tcp -s tcp-events`` run; its JSON report.

    ``prefix`` goes before the command (e.g. a ``taskset`` pinning).
    """
    subprocess.run(
        [
            *prefix,
            sys.executable,
            "-m",
            "service",
            "loadtest",
            "tcp",
            f"127.0.0.1:{tcp_port}",
            "-s",
            "tcp-events",
            "-c",
            str(connections),
            "-d",
            str(seconds),
            "--warmup",
            "1",
            "--json",
            str(report),
        ],
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
        check=True,
        timeout=seconds + 60,
    )
    result: dict[str, Any] = json.loads(report.read_text())
    return result
