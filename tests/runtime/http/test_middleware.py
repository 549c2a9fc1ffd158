"""The middleware: request ids, problem+json for every error, in-flight gauge, draining."""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.runtime import log
from service.runtime.errors import Overloaded, ValidationFailed
from service.runtime.http import compat
from service.runtime.keys import HTTP_MIDDLEWARE, METRICS, STATE
from tests.support.settings import make_settings

GATE = web.AppKey("gate", asyncio.Event)
GENERATED_ID = re.compile(r"[0-9a-f]{12}-[0-9a-f]+")


# Every test here runs on both ways of reading requests (service.runtime.http.compat).
FAST_PATH = True


@pytest.fixture(autouse=True, params=[True, False], ids=["fast", "public"])
def request_access(request: pytest.FixtureRequest) -> None:
    global FAST_PATH
    FAST_PATH = request.param


def _app(**http: Any) -> web.Application:
    app = create_app(make_settings(http={"fast_path": FAST_PATH, **http}))
    assert app[HTTP_MIDDLEWARE].access.fast is FAST_PATH
    gate = asyncio.Event()
    app[GATE] = gate

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("db password is hunter2")

    async def overloaded(request: web.Request) -> web.Response:
        raise Overloaded("queue full", retry_after=3)

    async def invalid(request: web.Request) -> web.Response:
        raise ValidationFailed("bad event", extra={"errors": [{"index": 0, "field": "type"}]})

    async def upload(request: web.Request) -> web.Response:
        return web.json_response({"size": len(await request.read())})

    async def wait(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response(text="done")

    app.router.add_get("/boom", boom)
    app.router.add_get("/overloaded", overloaded)
    app.router.add_get("/invalid", invalid)
    app.router.add_post("/upload", upload)
    app.router.add_get("/wait", wait)
    return app


def _lines(buf: io.BytesIO) -> list[dict[str, Any]]:
    log.sink().flush()
    return [json.loads(raw) for raw in buf.getvalue().splitlines()]


@pytest.mark.asyncio
@pytest.mark.parametrize("rid", ["abc", "0f8e-11:22.z_Q", "x" * 128])
async def test_sane_request_id_round_trips(rid: str) -> None:
    async with TestClient(TestServer(_app())) as client:
        resp = await client.get("/livez", headers={"X-Request-ID": rid})
        assert resp.headers["X-Request-ID"] == rid


@pytest.mark.asyncio
@pytest.mark.parametrize("rid", ["", "x" * 129, "a b", "<script>", "id;drop", "é", '"q"'])
async def test_insane_request_id_is_replaced(rid: str) -> None:
    async with TestClient(TestServer(_app())) as client:
        resp = await client.get("/livez", headers={"X-Request-ID": rid})
        got = resp.headers["X-Request-ID"]
        assert got != rid
        assert GENERATED_ID.fullmatch(got), got


@pytest.mark.asyncio
async def test_request_ids_are_generated_unique() -> None:
    async with TestClient(TestServer(_app())) as client:
        ids = {(await client.get("/livez")).headers["X-Request-ID"] for _ in range(20)}
    assert len(ids) == 20
    assert all(GENERATED_ID.fullmatch(i) for i in ids)


async def _problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status
    assert resp.headers["Content-Type"] == "application/problem+json"
    doc: dict[str, Any] = json.loads(await resp.read())
    assert doc["status"] == status
    assert doc["title"]
    assert doc["request_id"] == resp.headers["X-Request-ID"]
    return doc


@pytest.mark.asyncio
async def test_404_405_413_are_problem_json() -> None:
    async with TestClient(TestServer(_app(max_body_bytes=1024))) as client:
        await _problem(await client.get("/no/such/thing"), 404)
        resp = await client.delete("/livez")
        await _problem(resp, 405)
        assert "GET" in resp.headers["Allow"]
        await _problem(await client.post("/upload", data=b"x" * 2048), 413)
        ok = await client.post("/upload", data=b"x" * 1000)
        assert ok.status == 200


@pytest.mark.asyncio
async def test_problem_errors_keep_their_status_headers_and_members() -> None:
    async with TestClient(TestServer(_app())) as client:
        resp = await client.get("/overloaded")
        doc = await _problem(resp, 429)
        assert resp.headers["Retry-After"] == "3"
        assert doc["type"] == "urn:problem:overloaded"
        assert doc["detail"] == "queue full"
        doc = await _problem(await client.get("/invalid"), 422)
        assert doc["errors"] == [{"index": 0, "field": "type"}]


@pytest.mark.asyncio
async def test_unexpected_error_is_500_without_internals_and_logged(
    log_output: io.BytesIO,
) -> None:
    async with TestClient(TestServer(_app())) as client:
        resp = await client.get("/boom", headers={"X-Request-ID": "boom-1"})
        body = await resp.text()
        doc = await _problem(resp, 500)
    assert "hunter2" not in body
    assert "RuntimeError" not in body
    assert "Traceback" not in body
    assert doc["request_id"] == "boom-1"
    errors = [line for line in _lines(log_output) if line["event"] == "unhandled error"]
    assert len(errors) == 1
    assert errors[0]["request_id"] == "boom-1"
    assert errors[0]["level"] == "error"
    assert "hunter2" in errors[0]["exception"]  # the internals go to the log only
    access = [line for line in _lines(log_output) if line["event"] == "access"]
    assert access[-1]["status"] == 500


@pytest.mark.asyncio
async def test_in_flight_gauge_counts_requests_being_handled() -> None:
    app = _app()
    in_flight = app[METRICS].http_in_flight.labels()
    async with TestClient(TestServer(app)) as client:
        pending = [asyncio.create_task(client.get("/wait")) for _ in range(3)]
        for _ in range(200):
            if in_flight.value == 3:
                break
            await asyncio.sleep(0.01)
        assert in_flight.value == 3
        app[GATE].set()
        for resp in await asyncio.gather(*pending):
            assert resp.status == 200
    assert in_flight.value == 0


@pytest.mark.asyncio
async def test_responses_while_draining_close_the_connection() -> None:
    app = _app()
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/livez")
        assert resp.headers.get("Connection", "").lower() != "close"
        app[STATE].draining = True
        resp = await client.get("/livez")
        assert resp.headers["Connection"].lower() == "close"
        resp = await client.get("/nope")
        assert resp.status == 404
        assert resp.headers["Connection"].lower() == "close"


@pytest.mark.asyncio
async def test_client_gone_is_counted_as_499() -> None:
    app = _app()
    async with TestClient(TestServer(app)) as client:
        with pytest.raises(asyncio.TimeoutError):
            await client.get("/wait", timeout=0.2)
        counter = app[METRICS].http_requests.labels("GET", "/wait", "499")
        for _ in range(200):
            if counter.value:
                break
            await asyncio.sleep(0.01)
        assert counter.value == 1
        assert app[METRICS].http_in_flight.labels().value == 0


@pytest.mark.asyncio
async def test_the_fast_reads_agree_with_the_public_api_on_a_real_request() -> None:
    """What compat.FAST reads of aiohttp's private fields is what the public API says."""
    seen: dict[str, Any] = {}

    async def probe(request: web.Request) -> web.Response:
        seen["request"] = request
        return web.Response(text="ok", status=201)

    app = _app()
    app.router.add_get("/probe/{x}", probe)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/probe/1?q=2", headers={"User-Agent": "probe/1"})
        assert resp.status == 201
    request = seen["request"]
    assert compat.FAST.headers(request) is compat.PUBLIC.headers(request) is request.headers
    method, path, route, peer = compat.FAST.describe(request)
    assert (method, path, route) == compat.PUBLIC.describe(request)[:3]
    assert (method, path, route.resource.canonical) == ("GET", "/probe/1?q=2", "/probe/{x}")
    assert peer[0] == compat.PUBLIC.describe(request)[3][0] == request.remote == "127.0.0.1"
    response = web.Response(status=418)
    assert compat.FAST.status(response) == compat.PUBLIC.status(response) == 418


def test_an_app_made_on_one_thread_and_served_on_another_counts_every_request() -> None:
    """The serving loop's thread owns the records (claimed at start-up), not the maker's."""
    app = _app()  # made here, on the test's thread
    statuses: list[int] = []

    async def serve() -> None:
        async with TestClient(TestServer(app)) as client:
            for _ in range(3):
                statuses.append((await client.get("/livez")).status)

    worker = threading.Thread(target=asyncio.run, args=(serve(),))
    worker.start()
    worker.join(30)
    assert statuses == [200, 200, 200]
    assert app[METRICS].http_requests.labels("GET", "/livez", "200").value == 3
