"""The downstream client: limits, timeouts, headers, and every failure made a typed error."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from service.runtime.downstream import (
    BadResponse,
    BulkheadFull,
    Deadline,
    DownstreamNotFound,
    DownstreamTimeout,
)
from service.runtime.requestid import request_id_var
from service.tools.stub import serving
from tests.support.process import free_port
from tests.support.stubs import running_stub, started_client, wait_for


@pytest.mark.asyncio
async def test_session_has_explicit_limits_not_aiohttps_defaults() -> None:
    client = await started_client("users", "http://127.0.0.1:1", pool_size=7, connect_timeout=0.5)
    try:
        session = client._session
        assert session is not None
        assert session.connector is not None
        assert (session.connector.limit, session.connector.limit_per_host) == (7, 7)
        assert session.timeout.total == client.settings.deadline_seconds  # not 300 s
        assert session.timeout.connect == 0.5
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_forwards_request_id_and_remaining_deadline() -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(
            (request.headers.get("X-Request-ID"), request.headers.get("X-Request-Deadline-Ms"))
        )
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/x", handler)
    async with serving(app) as port:
        client = await started_client("users", f"http://127.0.0.1:{port}")
        try:
            token = request_id_var.set("req-123")
            try:
                assert await client.get_json("/x", Deadline.after(1.5)) == {"ok": True}
            finally:
                request_id_var.reset(token)
        finally:
            await client.close()
    ((rid, deadline_ms),) = seen
    assert rid == "req-123"
    assert deadline_ms is not None
    assert 1000 < int(deadline_ms) <= 1500


@pytest.mark.asyncio
@pytest.mark.parametrize("fail", ["malformed", "big"])
async def test_unusable_bodies_are_bad_responses(fail: str) -> None:
    async with running_stub("users") as stub:
        client = await started_client("users", stub.url, max_response_bytes=100_000)
        try:
            with pytest.raises(BadResponse) as info:
                await client.get_json(f"/users/u1?fail={fail}", Deadline.after(2))
            assert not info.value.retryable
            assert stub.stats.requests == 1
        finally:
            await client.close()


@pytest.mark.asyncio
async def test_body_over_the_cap_without_content_length_is_cut_off() -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(100):
            await resp.write(b"x" * 10_000)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/big", chunked)
    async with serving(app) as port:
        client = await started_client(
            "users", f"http://127.0.0.1:{port}", max_response_bytes=50_000
        )
        try:
            with pytest.raises(BadResponse, match="over 50000 bytes"):
                await client.get_json("/big", Deadline.after(2))
        finally:
            await client.close()


@pytest.mark.asyncio
async def test_not_found_is_its_own_error_and_not_a_failure() -> None:
    async with running_stub("users") as stub:
        client = await started_client("users", stub.url, breaker_failures=1)
        try:
            for _ in range(3):
                with pytest.raises(DownstreamNotFound):
                    await client.get_json("/users/u9999", Deadline.after(2))
            assert not client.breaker.is_open()
            assert client.stats()["ok"] == 3
        finally:
            await client.close()


@pytest.mark.asyncio
async def test_connection_refused_is_a_bad_response() -> None:
    client = await started_client("users", f"http://127.0.0.1:{free_port()}", retry_budget_ratio=0)
    try:
        with pytest.raises(BadResponse, match="connection failed"):
            await client.get_json("/users/u1", Deadline.after(2))
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_slow_downstream_times_out_at_the_deadline() -> None:
    async with running_stub("users", latency_ms=10_000) as stub:
        client = await started_client("users", stub.url)
        try:
            started = time.perf_counter()
            with pytest.raises(DownstreamTimeout):
                await client.get_json("/users/u1", Deadline.after(0.3))
            assert 0.25 < time.perf_counter() - started < 0.6
            assert client.stats()["timeout"] == 1
            # The stub stopped too: told by the header, or cancelled by the close.
            assert await wait_for(lambda: stub.stats.in_flight == 0, 1.0)
        finally:
            await client.close()


@pytest.mark.asyncio
async def test_full_bulkhead_rejects_after_a_short_wait() -> None:
    """A call waits for a slot only as long as its deadline leaves time for a typical call."""
    async with running_stub("users", latency_ms=300) as stub:
        client = await started_client("users", stub.url, bulkhead=2)
        try:
            # Two calls teach the bulkhead that a call takes about 300 ms (more
            # on a loaded machine: the deadline below is set from what it learnt).
            await asyncio.gather(
                *(client.get_json("/users/u1", Deadline.after(2)) for _ in range(2))
            )
            typical = client.bulkhead.typical
            assert 0.3 <= typical < 1.0
            holding = [
                asyncio.create_task(client.get_json("/users/u1", Deadline.after(3)))
                for _ in range(2)
            ]
            await asyncio.sleep(0.01)
            started = time.perf_counter()
            with pytest.raises(BulkheadFull):
                # 150 ms more than a typical call: it may wait 150 ms, not longer.
                await client.get_json("/users/u1", Deadline.after(typical + 0.15))
            assert 0.1 < time.perf_counter() - started < 0.25
            assert all(isinstance(r, dict) for r in await asyncio.gather(*holding))
            assert stub.stats.requests == 4
            assert client.stats()["rejected"] == 1
            assert not client.breaker.is_open()
        finally:
            await client.close()
