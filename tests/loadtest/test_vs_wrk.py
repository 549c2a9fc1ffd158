"""The client measures what wrk measures on the same steady target.

The target answers every request after a fixed 20 ms (``target_app``), so
latency is the server's, not the clients' CPU: both tools must report the
same percentiles and rate. Bounds are generous for a shared machine (p99 of
two runs of wrk itself differ by a third there) but a client that timed the
wrong interval, lost requests or lagged behind would fail them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.helpers import ROOT, free_port, http_get, require_tool

DELAY_MS = 20
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@pytest.fixture
def steady_target() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.loadtest.target_app", str(port),
                             str(DELAY_MS)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(100):
            try:
                http_get(url, timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        proc.kill()
        proc.wait(10)


def wrk_latency(wrk: str, url: str) -> tuple[dict[str, float], float]:
    out = subprocess.run([wrk, "-t1", "-c8", "-d2", "--latency", url], check=True,
                         capture_output=True, text=True, timeout=30).stdout
    pcts = {f"p{m[1]}": float(m[2]) * UNITS[m[3]]
            for m in re.finditer(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    assert len(pcts) == 3, out
    return pcts, rps


def ours(url: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "service", "loadtest", "http", url,
                          "-c", "8", "-d", "2", "--json", "-"], check=True,
                         capture_output=True, text=True, timeout=30, cwd=ROOT).stdout
    report: dict[str, object] = json.loads(out)
    return report


def test_percentiles_and_rate_agree_with_wrk(steady_target: str) -> None:
    wrk = require_tool("wrk")
    wrk_pcts, wrk_rps = wrk_latency(wrk, steady_target)
    report = ours(steady_target)
    lat = report["latency_ms"]
    assert isinstance(lat, dict)
    assert report["errors"] == 0
    assert lat["p50"] == pytest.approx(wrk_pcts["p50"], rel=0.10), (lat, wrk_pcts)
    assert lat["p90"] == pytest.approx(wrk_pcts["p90"], rel=0.15), (lat, wrk_pcts)
    assert lat["p99"] == pytest.approx(wrk_pcts["p99"], rel=0.5), (lat, wrk_pcts)
    assert report["requests_per_second"] == pytest.approx(wrk_rps, rel=0.10)
