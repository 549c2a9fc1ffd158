"""The admin listener: /metrics and /debug/tasks on the admin port only."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from service.app import create_app
from service.runtime import admin
from service.runtime.lifecycle import Service
from tests.support.process import http_get
from tests.support.settings import make_settings


@asynccontextmanager
async def started(debug: bool) -> AsyncIterator[tuple[Service, dict[str, int]]]:
    """A whole service in this process (both listeners on free loopback ports)."""
    service = Service(
        make_settings(admin={"debug": debug}, shutdown={"grace_seconds": 1, "cancel_seconds": 1}),
        create_app,
    )
    ports = await service.start()
    try:
        yield service, ports
    finally:
        await service.shutdown()


async def _get(session: aiohttp.ClientSession, port: int, path: str) -> tuple[int, str, str]:
    async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


@pytest.mark.asyncio
async def test_admin_routes_exist_on_the_admin_port_only() -> None:
    async with started(debug=True) as (_, ports), aiohttp.ClientSession() as session:
        status, ctype, body = await _get(session, ports["admin"], "/metrics")
        assert status == 200
        assert ctype.startswith("text/plain")
        assert "service_http_requests_total" in body
        status, _, _ = await _get(session, ports["admin"], "/debug/tasks")
        assert status == 200
        for path in ("/metrics", "/debug/tasks"):
            status, ctype, _ = await _get(session, ports["http"], path)
            assert status == 404, path
            assert ctype == "application/problem+json"
        # ...and the public API is not on the admin port.
        status, _, _ = await _get(session, ports["admin"], "/v1/info")
        assert status == 404


@pytest.mark.asyncio
async def test_debug_tasks_is_off_unless_enabled() -> None:
    async with started(debug=False) as (_, ports), aiohttp.ClientSession() as session:
        status, ctype, body = await _get(session, ports["admin"], "/debug/tasks")
    assert status == 404
    assert ctype == "application/problem+json"
    assert "admin.debug" in body


@pytest.mark.asyncio
async def test_debug_tasks_lists_every_task() -> None:
    release = asyncio.Event()

    async def parked() -> None:
        await release.wait()

    async with started(debug=True) as (_, ports), aiohttp.ClientSession() as session:
        task = asyncio.create_task(parked(), name="pipeline:test-parked")
        await asyncio.sleep(0)
        status, ctype, body = await _get(session, ports["admin"], "/debug/tasks")
        release.set()
        await task
    assert status == 200
    assert ctype.startswith("application/json")
    rows = {row["name"]: row for row in json.loads(body)}
    for row in rows.values():
        assert set(row) == {"name", "group", "state", "coroutine", "top_frame"}
    mine = rows["pipeline:test-parked"]
    assert mine == {
        "name": "pipeline:test-parked",
        "group": "pipeline",
        "state": "pending",
        "coroutine": mine["coroutine"],
        "top_frame": mine["top_frame"],
    }
    assert mine["coroutine"].endswith("parked")
    assert "test_admin.py" in mine["top_frame"]
    assert rows["monitor:loop-lag"]["group"] == "monitor"
    # The admin server has its own loop and thread: the dump is taken on the
    # service's loop between two tasks, so none is running.
    assert not [r for r in rows.values() if r["state"] == "running"]


@pytest.mark.asyncio
async def test_metrics_report_readiness() -> None:
    async with started(debug=False) as (service, ports), aiohttp.ClientSession() as session:
        _, _, body = await _get(session, ports["admin"], "/metrics")
        assert re.search(r"^service_ready 1\.0$", body, re.M)
        service.state.ready = False
        _, _, body = await _get(session, ports["admin"], "/metrics")
        assert re.search(r"^service_ready 0\.0$", body, re.M)


@pytest.mark.asyncio
async def test_a_workers_admin_livez_fails_while_the_service_loop_is_blocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A worker's /livez lives on the admin thread (workers.link) but speaks for
    # the service's loop: it must not answer 200 for a loop that is stuck.
    monkeypatch.setattr(admin, "LIVE_WAIT", 0.2)
    service = Service(make_settings(shutdown={"grace_seconds": 1, "cancel_seconds": 1}), create_app)
    service.admin.router.add_get("/livez", admin.livez)
    ports = await service.start()
    url = f"http://127.0.0.1:{ports['admin']}/livez"
    try:
        assert (await asyncio.to_thread(http_get, url))[0] == 200
        answer: concurrent.futures.Future[tuple[int, dict[str, str], bytes]]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(http_get, url)
            time.sleep(0.6)  # blocks the service's loop on purpose
            status, headers, _ = answer.result(timeout=5)
        assert status == 503
        assert headers["Content-Type"] == "application/problem+json"
        assert (await asyncio.to_thread(http_get, url))[0] == 200
    finally:
        await service.shutdown()
