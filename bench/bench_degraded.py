"""Failing fast stays fast: TCP event ingest with the users downstream down, against healthy.

Two services run side by side as ``python -m service serve`` on their
defaults, pinned to core 0: one enriches through a live users stub (on core
1; a working set of 64 users, so every lookup after the first is a cache
hit), the other through a users URL where nothing listens, so its breaker
is open nearly all the time. The load is ``service loadtest tcp -s
tcp-events -c 32`` (closed loop, one event line in flight per connection)
from core 1, alternating between the two services round by round, so a noisy
neighbour hits both alike.

The row's value is the degraded rate, its baseline the healthy rate of the
same run (medians), its ratio the median of the per-round ratios; the
target: at least 0.9x, with a p99 at most 2x the healthy one.
An open breaker must cost a batch one check, not an exception per event.

Run it alone, on an otherwise idle machine: ``make bench BENCH_ARGS="--only degraded"``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_pipeline import users_stub  # noqa: E402
from bench.common import free_port, loopback_env, pin, stop_service, wait_pong  # noqa: E402
from tests.support.process import tcp_events_load  # noqa: E402

ROUNDS = 3
CONNECTIONS = 32
TARGET_RATIO, TARGET_P99 = 0.9, 2.0


@contextmanager
def _service(name: str, users_url: str, tmp: Path) -> Iterator[dict[str, Any]]:
    """One service on core 0 with its users downstream at ``users_url``; yields its ports."""
    ports = {"http": free_port(), "tcp": free_port(), "admin": free_port()}
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "SERVICE_DOWNSTREAM__USERS_URL": users_url,
        **loopback_env(ports, tmp / f"{name}.jsonl"),
    }
    log_path = tmp / f"{name}.log"
    with log_path.open("wb") as out:
        svc = subprocess.Popen(
            [*pin(0), sys.executable, "-m", "service", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        info: dict[str, Any] = {"tcp": ports["tcp"], "admin": ports["admin"]}
        try:
            wait_pong(ports["tcp"], svc)
            yield info
        finally:
            info["exit_code"], info["summary"] = stop_service(svc, log_path)


def _load(tcp_port: int, duration: float, report: Path) -> dict[str, Any]:
    """One closed-loop run of ``service loadtest`` on core 1; its JSON report."""
    return tcp_events_load(tcp_port, duration, report, connections=CONNECTIONS, prefix=pin(1))


def measure(duration: float, rounds: int = ROUNDS) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"healthy": [], "degraded": []}
    with (
        tempfile.TemporaryDirectory(prefix="bench-degraded-") as tmp_name,
        users_stub() as users,
        ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        services = {
            "healthy": stack.enter_context(
                _service("healthy", users["SERVICE_DOWNSTREAM__USERS_URL"], tmp)
            ),
            # Nothing listens there: every call is refused (until the breaker opens).
            "degraded": stack.enter_context(
                _service("degraded", f"http://127.0.0.1:{free_port()}", tmp)
            ),
        }
        for i in range(rounds):
            for name, svc in services.items():
                runs[name].append(_load(svc["tcp"], duration, tmp / f"{name}-{i}.json"))
    return {"runs": runs, "services": services}


def _median(runs: list[dict[str, Any]], key: str) -> float:
    if key == "rate":
        return statistics.median(r["requests_per_second"] for r in runs)
    return statistics.median(r["latency_ms"][key] for r in runs)


def rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    healthy, degraded = m["runs"]["healthy"], m["runs"]["degraded"]
    rate_h, rate_d = _median(healthy, "rate"), _median(degraded, "rate")
    p99_h, p99_d = _median(healthy, "p99"), _median(degraded, "p99")
    ratios = [
        d["requests_per_second"] / h["requests_per_second"]
        for h, d in zip(healthy, degraded, strict=True)
    ]
    shutdown = {
        name: {k: v for k, v in svc["summary"].items() if k in ("exit_code", "dropped")}
        for name, svc in m["services"].items()
    }
    return [
        {
            "name": f"TCP event ingest, users downstream down ({CONNECTIONS} connections, "
            "closed loop)",
            "value": rate_d,
            "unit": "events/s",
            "baseline": "users downstream healthy, same run",
            "baseline_value": rate_h,
            "ratio": statistics.median(ratios),
            "target": f">= {TARGET_RATIO}x, p99 <= {TARGET_P99}x",
            "note": f"median of {len(ratios)} rounds' ratios ("
            + ", ".join(f"{r:.2f}" for r in ratios)
            + f"); p99 {p99_d:.2f} ms down vs {p99_h:.2f} ms healthy "
            f"({p99_d / p99_h:.2f}x); p50 {_median(degraded, 'p50'):.2f} vs "
            f"{_median(healthy, 'p50'):.2f} ms; errors "
            f"{sum(r['errors'] for r in degraded)} down, {sum(r['errors'] for r in healthy)} "
            f"healthy; shutdown {shutdown}",
        }
    ]


def run(duration: float) -> list[dict[str, Any]]:
    return rows(measure(duration))


if __name__ == "__main__":
    # python bench/bench_degraded.py [DURATION [ROUNDS]]: by hand, under flock.
    args = sys.argv[1:]
    result = measure(float(args[0]) if args else 5.0, int(args[1]) if len(args) > 1 else 1)
    print(json.dumps(rows(result), indent=2))
