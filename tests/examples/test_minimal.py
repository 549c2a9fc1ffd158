"""examples/minimal: a service on the runtime alone starts, serves, is scraped and shuts down."""

from __future__ import annotations

import json
import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from tests.support.process import running_service, scrape

pytestmark = pytest.mark.slow


def _post(url: str, body: bytes) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_minimal_example_serves_its_route_stage_and_tcp_then_stops_clean(
    tmp_path: Path,
) -> None:
    sink = tmp_path / "notes.jsonl"
    env = {"SERVICE_PIPELINE__SINK_PATH": str(sink)}
    with running_service([], env=env, module="examples.minimal") as proc:
        ids = []
        for text in ("hello", "quiet please"):
            status, body = _post(proc.url("/notes"), json.dumps({"text": text}).encode())
            assert status == 202
            ids.append(body["id"])
        status, problem = _post(proc.url("/notes"), b'{"text": 5}')
        assert status == 400
        assert problem["status"] == 400  # problem+json from the runtime's middleware
        with socket.create_connection(("127.0.0.1", proc.ports["tcp"]), timeout=5) as sock:
            sock.sendall(b"PING\nhi there\n")
            assert sock.makefile("rb").readline() == b"PONG\n"
        metrics = scrape(proc.url("/metrics", "admin"))
        assert (
            metrics['service_http_requests_total{method="POST",route="/notes",status="202"}'] == 2
        )
        assert metrics['service_pipeline_queue_capacity{stage="shout"}'] == 1000
        assert metrics["service_ready"] == 1
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    lines = [json.loads(line) for line in sink.read_text().splitlines()]
    assert [(line["id"], line["text"]) for line in lines] == [
        (ids[0], "HELLO"),
        (ids[1], "QUIET PLEASE"),
    ]
    (summary,) = proc.events("shutdown complete")
    assert summary["accepted"] == summary["delivered"] == 2
