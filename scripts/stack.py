"""`make stack`: the compose topology on one machine, without Docker.

Starts a stub per configured downstream (``users`` and ``orders`` by
default; ``--stub-port NAME=PORT`` to move one), the service pointed at them, and a
real Prometheus (Debian's ``prometheus`` package) scraping the service's admin
port with the rule files of ``config/prometheus/`` (the same ``alerts.yml``
that docker-compose.yml loads). Ctrl-C or SIGTERM stops everything in order:
the service first (it drains while its downstreams are still up), then the
stubs and Prometheus. If any process dies on its own, the rest are stopped and
the exit status is 1.

The children run in their own sessions, so a Ctrl-C in the terminal reaches
only this script, which then gives each child exactly one SIGTERM (a second
signal would make the service skip its drain). On Linux each child also gets
SIGTERM from the kernel if this script dies without cleaning up (SIGKILL).

tests/deploy/test_monitoring.py runs this script with free ports and checks, through
Prometheus' HTTP API, that every metric of the dashboard and the alerts exists.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "config" / "prometheus"
# The service's own shutdown budget is about 24 s with the defaults
# (config/default.toml [shutdown]); wait a little longer before SIGKILL.
SERVICE_STOP_TIMEOUT = 35.0
OTHER_STOP_TIMEOUT = 10.0


class Stop(Exception):
    """Raised in the main thread by SIGINT/SIGTERM."""


def prometheus_config(admin_target: str, scrape_interval: str = "5s") -> dict[str, Any]:
    """config/prometheus/prometheus.yml with local targets and absolute rule file paths."""
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["evaluation_interval"] = scrape_interval
    config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config.get("rule_files", [])]
    # The file scrapes one job, the service's admin port.
    [job] = config["scrape_configs"]
    job["static_configs"] = [{"targets": [admin_target]}]
    return config


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux PR_SET_PDEATHSIG)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A child in its own session, that does not outlive this script."""
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


def start_prometheus(
    workdir: Path, port: int, admin_target: str, scrape_interval: str = "5s"
) -> subprocess.Popen[bytes]:
    """Debian's prometheus on 127.0.0.1:port, its config and TSDB under ``workdir``."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("stack: prometheus not found; `apt-get install prometheus` first")
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(prometheus_config(admin_target, scrape_interval)))
    return _spawn(
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
    )


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``python -m service <args>`` in its own session (see the module docstring)."""
    return _spawn([sys.executable, "-m", "service", *args], env={**os.environ, **(env or {})})


def wait_until(
    ready: Any, what: str, procs: dict[str, subprocess.Popen[bytes]], timeout: float = 30.0
) -> None:
    """Poll ``ready()`` until true; fail early if one of ``procs`` has exited."""
    deadline = time.monotonic() + timeout
    while not ready():
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(0.1)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
    except OSError:
        return False
    return True


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def stop(name: str, proc: subprocess.Popen[bytes], timeout: float) -> int:
    """One SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"stack: {name} did not stop in {timeout:.0f}s: killing it", file=sys.stderr)
        proc.kill()
        return proc.wait()


@contextlib.contextmanager
def signals_raise_stop() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stub_ports(overrides: list[str]) -> dict[str, int]:
    """A stub per downstream the settings name on loopback, with ``NAME=PORT`` overrides."""
    from service.settings import load_settings
    from service.tools.stub import loopback_targets

    ports = loopback_targets(load_settings().downstream)
    for item in overrides:
        name, _, port = item.partition("=")
        ports[name] = int(port)
    return ports


def run(args: argparse.Namespace) -> int:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    admin_target = f"127.0.0.1:{args.admin_port}"
    code = 0
    with tempfile.TemporaryDirectory(prefix="stack-prometheus-") as tmp, signals_raise_stop():
        try:
            stubs = stub_ports(args.stub_port)
            for name, port in stubs.items():
                procs[name] = start(["stub", "--name", name, "--port", str(port)])
            for name, port in stubs.items():
                wait_until(lambda p=port: port_open(p), f"{name} stub", procs)
            procs["service"] = start(
                ["serve"],
                env={
                    "SERVICE_HTTP__PORT": str(args.http_port),
                    "SERVICE_TCP__PORT": str(args.tcp_port),
                    "SERVICE_ADMIN__HOST": "127.0.0.1",
                    "SERVICE_ADMIN__PORT": str(args.admin_port),
                    **{
                        f"SERVICE_DOWNSTREAM__SERVICES__{name.upper()}__URL": f"http://127.0.0.1:{port}"
                        for name, port in stubs.items()
                    },
                },
            )
            wait_until(
                lambda: http_ok(f"http://127.0.0.1:{args.http_port}/readyz"), "service", procs
            )
            procs["prometheus"] = start_prometheus(
                Path(tmp), args.prometheus_port, admin_target, args.scrape_interval
            )
            wait_until(
                lambda: http_ok(f"http://127.0.0.1:{args.prometheus_port}/-/ready"),
                "prometheus",
                procs,
            )
            print(
                json.dumps(
                    {
                        "event": "stack ready",
                        "service": f"http://127.0.0.1:{args.http_port}",
                        "tcp": f"127.0.0.1:{args.tcp_port}",
                        "metrics": f"http://{admin_target}/metrics",
                        "prometheus": f"http://127.0.0.1:{args.prometheus_port}",
                        "alerts": f"http://127.0.0.1:{args.prometheus_port}/alerts",
                    }
                ),
                flush=True,
            )
            # Run until a signal, or until a child exits by itself.
            while all(proc.poll() is None for proc in procs.values()):
                time.sleep(0.2)
            dead = [name for name, proc in procs.items() if proc.poll() is not None]
            print(f"stack: {', '.join(dead)} exited on its own; stopping", file=sys.stderr)
            code = 1
        except Stop as exc:
            print(f"stack: {exc}: stopping", file=sys.stderr, flush=True)
        except RuntimeError as exc:
            print(f"stack: {exc}; stopping", file=sys.stderr, flush=True)
            code = 1
        # Further Ctrl-C while stopping would only leave orphans: ignore it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # The service first, while its downstreams still answer; then the rest.
        if "service" in procs and stop("service", procs.pop("service"), SERVICE_STOP_TIMEOUT):
            code = 1
        for name, proc in procs.items():
            stop(name, proc, OTHER_STOP_TIMEOUT)
    print(json.dumps({"event": "stack stopped", "exit_code": code}), flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--tcp-port", type=int, default=8888)
    parser.add_argument("--admin-port", type=int, default=8081)
    parser.add_argument(
        "--stub-port",
        action="append",
        default=[],
        metavar="NAME=PORT",
        help="run downstream NAME's stub on PORT (repeatable)",
    )
    parser.add_argument("--prometheus-port", type=int, default=9090)
    parser.add_argument("--scrape-interval", default="5s", help="Prometheus duration, e.g. 1s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
