"""The command line: --version, exit codes, one-line errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from service import __version__
from service.cli import build_parser
from service.runtime.loop import loop_factory, run_loop
from tests.support.process import ROOT, service_env


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("SERVICE_")}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**base, **(env or {})},
        cwd=ROOT,
    )


def test_version() -> None:
    proc = _run("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"{build_parser().prog} {__version__}"


def test_subcommands_are_listed() -> None:
    parser = build_parser()
    for command in ("serve", "stub", "loadtest"):
        assert command in parser.format_help()
    proc = _run()
    assert proc.returncode == 2
    assert "usage" in proc.stderr


@pytest.mark.parametrize("listener", ["HTTP", "ADMIN"])
def test_port_in_use_exits_2_with_one_line(listener: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run(
            "serve",
            env={
                **service_env(),
                f"SERVICE_{listener}__PORT": str(port),
                "SERVICE_LOG__FORMAT": "json",
            },
        )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [
        line
        for line in proc.stdout.splitlines() + proc.stderr.splitlines()
        if '"level":"error"' in line or "error" in line.lower()
    ]
    assert len(errors) == 1, proc.stdout + proc.stderr
    assert str(port) in errors[0]


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_run_loop_uses_the_chosen_loop(kind: str) -> None:
    async def which() -> int:
        import asyncio

        return 1 if "uvloop" in type(asyncio.get_running_loop()).__module__ else 0

    assert run_loop(which(), kind) == (1 if kind == "uvloop" else 0)
    assert (loop_factory(kind) is None) == (kind == "asyncio")


def test_debug_loop_setting_reaches_the_loop() -> None:
    async def debug() -> int:
        import asyncio

        return int(asyncio.get_running_loop().get_debug())

    assert run_loop(debug(), "asyncio", debug=True) == 1
    assert run_loop(debug(), "asyncio", debug=False) == 0
