"""No loss across a real process: SIGTERM mid-stream, and SIGKILL then restart.

Several HTTP clients (batches) and TCP clients (one event per line) send
events to ``python -m service serve`` while it is stopped; every id a client
was given must be in the sink file exactly once.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import (
    TcpEventClient,
    acked,
    start_clients,
    wait_acked,
)
from tests.support.process import running_service, scrape

pytestmark = pytest.mark.slow


def sink_records(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "torn last line"
    return [json.loads(line) for line in data.splitlines()]


def env_for(path: Path) -> dict[str, str]:
    return {
        "SERVICE_PIPELINE__SINK_PATH": str(path),
        "SERVICE_LOG__ACCESS_LOG": "false",
        "SERVICE_SHUTDOWN__GRACE_SECONDS": "5",
        "SERVICE_SHUTDOWN__DRAIN_SECONDS": "10",
    }


def test_sigterm_mid_stream_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    stop = threading.Event()
    with running_service(env=env_for(path)) as proc:
        clients = start_clients([proc.ports], stop, http=3, tcp=2)
        wait_acked(clients, 3000)
        proc.signal(signal.SIGTERM)
        code = proc.wait(30)
        stop.set()
        for client in clients:
            client.join(10)
    assert [c.error for c in clients if c.error] == []
    assert code == 0, proc.output()[-3000:]
    given = acked(clients)
    assert len(set(given)) == len(given)
    ids = [r["id"] for r in sink_records(path)]
    assert len(set(ids)) == len(ids), "an event was written twice"
    missing = set(given) - set(ids)
    assert not missing, f"{len(missing)} acknowledged events are not in the sink"
    unknown = set(ids) - set(given)
    assert len(unknown) <= sum(c.unanswered for c in clients)
    tcp_clients = sum(isinstance(c, TcpEventClient) for c in clients)
    print(
        f"\nSIGTERM: {len(given)} acknowledged ({tcp_clients}"
        f" TCP clients), {len(ids)} in the sink, {len(unknown)} answered too late to count"
    )
    [summary] = proc.events("shutdown complete")
    assert summary["dropped"] == 0
    assert summary["accepted"] == summary["delivered"] == len(ids)
    assert (
        any(isinstance(c, TcpEventClient) and c.acked for c in clients) or "tcp" not in proc.ports
    )


def test_sigkill_then_restart_keeps_every_event_fsynced_before_the_kill(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    env = env_for(path)
    stop = threading.Event()
    with running_service(env=env) as proc:
        # Phase 1: send, pause, and wait until the sink has fsynced everything.
        clients = start_clients([proc.ports], stop, http=3, tcp=2)
        wait_acked(clients, 2000)
        stop.set()
        for client in clients:
            client.join(10)
        durable = set(acked(clients))
        metrics_url = proc.url("/metrics", "admin")
        deadline = time.monotonic() + 10
        key = 'service_pipeline_events_total{outcome="delivered",stage="sink"}'
        while scrape(metrics_url).get(key, 0) < len(durable):
            assert time.monotonic() < deadline, "the sink never caught up"
            time.sleep(0.05)
        # Phase 2: SIGKILL while clients are sending.
        stop2 = threading.Event()
        clients2 = start_clients([proc.ports], stop2, http=3, tcp=2)
        wait_acked(clients2, 500)
        assert proc.proc is not None
        proc.proc.kill()
        proc.wait(10)
        stop2.set()
        for client in clients2:
            client.join(10)
    after_kill = sink_records(path)  # every complete line parses; none is torn
    ids = [r["id"] for r in after_kill]
    assert len(set(ids)) == len(ids)
    assert durable <= set(ids), "an event fsynced before the kill is missing"
    given = durable | set(acked(clients2))
    assert len(set(ids) - given) <= sum(c.unanswered for c in clients2)

    # A crash can also leave a torn last line (a power loss mid-write): the
    # restarted service sets it aside and appends after the last whole line.
    with path.open("ab") as fh:
        fh.write(b'{"id":"torn-by-the-crash","user_id":"u1","ty')
    stop3 = threading.Event()
    with running_service(env=env) as proc:
        clients3 = start_clients([proc.ports], stop3)
        wait_acked(clients3, 200)
        stop3.set()
        for client in clients3:
            client.join(10)
        assert proc.stop(30) == 0, proc.output()[-3000:]
        assert proc.events("sink had a torn last line: set aside")
    final = sink_records(path)
    final_ids = [r["id"] for r in final]
    assert len(set(final_ids)) == len(final_ids)
    assert "torn-by-the-crash" not in final_ids
    assert set(ids) | set(acked(clients3)) == set(final_ids)
    sides = list(tmp_path.glob("events.jsonl.torn-*"))
    assert [s.read_bytes() for s in sides] == [b'{"id":"torn-by-the-crash","user_id":"u1","ty']
