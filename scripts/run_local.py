"""`make run`: the downstream stubs and the service, in the foreground, on the defaults.

Starts ``service stub --name NAME`` for every ``[downstream.services.<name>]``
whose URL is on loopback, on that URL's port (users on 8091 and orders on
8092 unless the settings say otherwise), then ``service serve`` with the
same environment and any arguments given here (e.g. ``--config FILE``).

The children run in their own process group, so a Ctrl-C in the terminal
reaches the service exactly once, forwarded from here: the first signal runs
the graceful shutdown, a second one exits at once (docs/contract.md). When the service
has exited the stubs are stopped, and this script exits with the service's
exit code. A stub that cannot start (not implemented, port taken) is reported
and skipped: the service still runs, and its downstream calls fail as they
would in production.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from service.settings import ConfigError, load_settings
from service.tools.stub import loopback_targets


def say(message: str) -> None:
    print(f"run_local: {message}", file=sys.stderr, flush=True)


def stub_ports(argv: list[str]) -> dict[str, int]:
    """The downstreams to stand in for, by name, with their ports (from the service's settings)."""
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config")
    try:
        return loopback_targets(load_settings(config.parse_known_args(argv)[0].config).downstream)
    except ConfigError:
        return {}  # the service reports what is wrong with its settings


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start_stub(name: str, port: int, timeout: float = 10.0) -> subprocess.Popen[bytes] | None:
    """Start one stub and wait until it accepts; ``None`` (reported) if it cannot start."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "stub", "--name", name, "--port", str(port)],
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            say(f"stub {name!r} exited with {proc.returncode}; running the service without it")
            return None
        if _accepting(port):
            say(f"stub {name!r} listening on 127.0.0.1:{port}")
            return proc
        time.sleep(0.05)
    say(f"stub {name!r} did not listen on {port} in {timeout:.0f}s; running without it")
    stop(proc)
    return None


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str]) -> int:
    stubs = [
        p for name, port in stub_ports(argv).items() if (p := start_stub(name, port)) is not None
    ]
    service = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", *argv], start_new_session=True
    )

    def forward(sig: int, _frame: FrameType | None) -> None:
        if service.poll() is None:
            service.send_signal(sig)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        code = service.wait()
    finally:
        if service.poll() is None:  # only if waiting itself failed
            service.kill()
            service.wait()
        for proc in stubs:
            stop(proc)
    say(f"service exited with {code}")
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
