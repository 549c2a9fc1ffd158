"""A core worker that dies takes the service down with exit code 1 and one line saying why.

Otherwise the service would sit with ``/readyz`` 503 and ``/livez`` 200
forever, and no orchestrator would restart it.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.support.process import running_service

FAULTS = "tests.apps.fault_service"
EVENT = {"user_id": "u1", "type": "click"}


def _post(url: str, body: object = None) -> int:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(resp.status)


@pytest.mark.parametrize(
    ("what", "reason"),
    [
        ("stage", "pipeline failed: TypeError: object of type 'NoneType' has no len()"),
        ("sink", "pipeline failed: RuntimeError: injected failure"),
        ("tcp", "tcp server's sweeper failed: RuntimeError: injected failure"),
    ],
)
def test_a_dead_core_worker_stops_the_service_with_exit_code_1(what: str, reason: str) -> None:
    with running_service(module=FAULTS) as svc:
        assert _post(svc.url(f"/test/break/{what}")) == 200
        if what != "tcp":  # the pipeline's workers fail on the next event
            assert _post(svc.url("/v1/events"), EVENT) == 202
        code = svc.wait(30)
    assert code == 1, svc.output()
    [line] = svc.events("a core component failed: shutting down, exit code 1")
    assert line["level"] == "error"
    assert line["reason"] == reason
    assert "injected failure" in line["exception"] or "has no len()" in line["exception"]
    [summary] = svc.events("shutdown complete")
    assert (summary["exit_code"], summary["failure"]) == (1, reason)
