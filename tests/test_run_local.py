"""`make run` (scripts/run_local.py): stubs when available, the service, signal forwarding."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from tests.support.process import ROOT, free_port, http_get, service_env


def test_run_local_serves_and_stops_cleanly_on_sigterm() -> None:
    users, orders = free_port(), free_port()
    env = {
        **os.environ,
        **service_env(),
        "SERVICE_LOG__FORMAT": "json",
        "SERVICE_DOWNSTREAM__USERS_URL": f"http://127.0.0.1:{users}",
        "SERVICE_DOWNSTREAM__ORDERS_URL": f"http://127.0.0.1:{orders}",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "scripts/run_local.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: list[dict[str, Any]] = []
    raw: list[bytes] = []
    listening = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            raw.append(line)
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                lines.append(doc)
                if doc.get("event") == "listening" and doc.get("logger") != "stub":
                    listening.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert listening.wait(30), b"".join(raw).decode(errors="replace")
        (event,) = [d for d in lines if d.get("event") == "listening" and d.get("logger") != "stub"]
        status, _, _ = http_get(f"http://127.0.0.1:{event['http_port']}/livez")
        assert status == 200
        # The env reached the service: its downstreams are the ports given here.
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        assert proc.stdout is not None
        proc.stdout.close()
    output = b"".join(raw).decode(errors="replace")
    assert code == 0, output
    assert took < 10
    summaries = [d for d in lines if d.get("event") == "shutdown complete"]
    assert len(summaries) == 1, output  # one signal forwarded, one graceful shutdown
    assert summaries[0]["exit_code"] == 0
    assert "second signal" not in output
    assert "run_local: service exited with 0" in output
    # Stubs (when implemented) ran on the ports from the env, and were stopped.
    for name, port in (("users", users), ("orders", orders)):
        started = f"stub '{name}' listening on 127.0.0.1:{port}" in output
        assert started or f"stub '{name}' exited" in output, output
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
