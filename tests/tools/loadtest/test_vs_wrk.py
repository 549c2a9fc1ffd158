"""The client measures what wrk measures on the same steady target.

wrk (not wrk2) post-corrects a closed-loop histogram for coordinated omission
before it prints ``--latency`` (``stats_correct`` in wrk's ``src/stats.c``):
every latency of at least twice the mean round trip adds synthetic samples
below it. The like-for-like figures are therefore the client's
``latency_ms_co_corrected`` (wrk's rule applied to its own histogram), and
the second test proves on a bimodal target that wrk really does this: there
the corrected p90 is wrk's, the raw one is a fraction of it.

Both tools run at once on one target, so they meet the same server and the
same machine weather (sequential runs of wrk itself differ by a third in p99
on this shared machine; side by side, two wrks agree within 2-3% idle and
within 10% with both cores busy). A round passes when every figure is within
10%; up to three rounds absorb a burst of load, so a client that times the
wrong interval, loses requests or lags behind still fails every round.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.support.process import ROOT, free_port, http_get, require_tool

ROUNDS = 3
TOLERANCE = 0.10
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@contextmanager
def target(delay_ms: int, slow_every: int = 0, slow_ms: int = 0) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.tools.loadtest.target_app",
            str(port),
            str(delay_ms),
            str(slow_every),
            str(slow_ms),
        ],
        cwd=ROOT,
    )
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


def parse_wrk(out: str) -> tuple[dict[str, float], float]:
    pcts = {
        f"p{m[1]}": float(m[2]) * UNITS[m[3]]
        for m in re.finditer(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps is not None, out
    assert len(pcts) == 3, out
    return pcts, float(rps[1])


def side_by_side(
    url: str, connections: int, seconds: int
) -> tuple[dict[str, Any], dict[str, float], float]:
    """Our report and wrk's percentiles and rate, both run at once against ``url``."""
    wrk = require_tool("wrk")
    ours_proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "loadtest",
            "http",
            url,
            "-c",
            str(connections),
            "-d",
            str(seconds),
            "--json",
            "-",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    time.sleep(0.3)  # about what the Python client takes to start
    wrk_out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}", "--latency", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    ours, _ = ours_proc.communicate(timeout=30)
    assert ours_proc.returncode == 0
    report = json.loads(ours)
    assert report["errors"] == 0, report
    wrk_pcts, wrk_rps = parse_wrk(wrk_out)
    return report, wrk_pcts, wrk_rps


def off_by(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, float]:
    """Relative differences of the figures both have."""
    return {k: round(ours[k] / theirs[k] - 1, 3) for k in theirs}


def test_percentiles_and_rate_agree_with_wrk() -> None:
    """10 ms per answer, 8 connections each: p50/p90/p99 and req/s within 10% of wrk's."""
    rounds = []
    with target(10) as url:
        for _ in range(ROUNDS):
            report, wrk_pcts, wrk_rps = side_by_side(url, 8, 3)
            ours = {**report["latency_ms_co_corrected"], "rps": report["requests_per_second"]}
            diff = off_by(ours, {**wrk_pcts, "rps": wrk_rps})
            rounds.append((diff, ours, wrk_pcts, wrk_rps))
            if all(abs(d) <= TOLERANCE for d in diff.values()):
                return
    raise AssertionError(f"not within 10% of wrk in {ROUNDS} rounds: {rounds}")


def test_wrk_latency_is_coordinated_omission_corrected() -> None:
    """Every 20th answer takes 30 ms, the rest are immediate, one connection each.

    Raw, p90 is a fast answer (well under a millisecond); wrk prints about
    25 ms, because each 30 ms answer adds synthetic samples every mean round
    trip below it. Ours, corrected by wrk's rule, must print the same.
    """
    rounds = []
    with target(0, 20, 30) as url:
        for _ in range(ROUNDS):
            report, wrk_pcts, _ = side_by_side(url, 1, 3)
            raw, corrected = report["latency_ms"], report["latency_ms_co_corrected"]
            assert raw["p90"] < wrk_pcts["p90"] / 3, (raw, wrk_pcts)  # wrk's is not raw
            diff = off_by(corrected, {k: wrk_pcts[k] for k in ("p90", "p99")})
            rounds.append((diff, corrected, wrk_pcts))
            if all(abs(d) <= TOLERANCE for d in diff.values()):
                return
    raise AssertionError(f"not within 10% of wrk in {ROUNDS} rounds: {rounds}")
