"""Logging: JSON lines, the request id in every line of a request, safe header values."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest

from service.app import create_app
from service.runtime import log
from service.runtime.keys import METRICS
from service.runtime.log.access import AccessLog
from service.runtime.settings import LogSettings
from tests.support.settings import make_settings


def lines(buf: io.BytesIO) -> list[dict[str, Any]]:
    log.sink().flush()
    return [json.loads(raw) for raw in buf.getvalue().splitlines()]


def test_one_json_line_per_call(log_output: io.BytesIO) -> None:
    logger = log.get_logger("test.log")
    logger.info("first", answer=42)
    logger.warning("second", text='a "quoted"\nvalue')
    out = lines(log_output)
    assert len(out) == 2
    assert out[0]["event"] == "first"
    assert out[0]["answer"] == 42
    assert out[0]["level"] == "info"
    assert out[0]["logger"] == "test.log"
    assert out[0]["timestamp"].endswith("Z")
    assert out[1]["text"] == 'a "quoted"\nvalue'


def test_level_filters(log_output: io.BytesIO) -> None:
    buf = io.BytesIO()
    log.configure(LogSettings(format="json", level="warning", flush_interval=0), stream=buf)
    log.get_logger("x").info("hidden")
    logging.getLogger("lib").info("hidden too")
    log.get_logger("x").error("shown")
    assert [line["event"] for line in lines(buf)] == ["shown"]


def test_stdlib_records_become_json_lines(log_output: io.BytesIO) -> None:
    logging.getLogger("some.library").warning("disk %s is %d%% full", "sda", 91)
    (line,) = lines(log_output)
    assert line["event"] == "disk sda is 91% full"
    assert line["logger"] == "some.library"
    assert line["level"] == "warning"


def test_exceptions_stay_on_one_line(log_output: io.BytesIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        log.get_logger("x").exception("failed")
        logging.getLogger("lib").exception("stdlib failed")
    out = lines(log_output)
    assert len(out) == 2
    assert "ValueError: boom" in out[0]["exception"]
    assert "ValueError: boom" in out[1]["exception"]


def test_buffered_sink_writes_on_flush_and_at_once_for_errors() -> None:
    buf = io.BytesIO()
    sink = log.LogSink(buf)
    sink.buffering = True
    sink.write_line(b"a")
    assert buf.getvalue() == b""
    sink.write_line(b"b", urgent=True)
    assert buf.getvalue() == b"a\nb\n"
    sink.write_line(b"c")
    sink.flush()
    assert buf.getvalue() == b"a\nb\nc\n"


class _Writes(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, data: Any) -> int:
        self.sizes.append(len(data))
        return super().write(data)


def test_sink_with_max_write_writes_whole_lines_in_small_pieces() -> None:
    """Several processes on one pipe (workers): each write is whole lines, at most max_write."""
    out = _Writes()
    sink = log.LogSink(out)
    sink.max_write = 100
    sink.buffering = True
    lines_in = [b"x" * n for n in (10, 40, 60, 5, 150, 30, 0, 99)]
    for line in lines_in:
        sink.write_line(line)
    sink.flush()
    assert out.getvalue() == b"\n".join(lines_in) + b"\n"
    assert out.sizes == [52, 67, 151, 32, 100]
    # Without it, one write.
    out = _Writes()
    sink = log.LogSink(out)
    sink.buffering = True
    for line in lines_in:
        sink.write_line(line)
    sink.flush()
    assert out.sizes == [len(b"\n".join(lines_in)) + 1]


@pytest.mark.asyncio
async def test_buffered_access_lines_are_settled_by_the_owner_thread_only() -> None:
    """Batched access lines: written at the loop's flush and scrape, never by other threads'."""
    buf = io.BytesIO()
    log.configure(LogSettings(format="json", flush_interval=0), stream=buf)
    sink = log.sink()
    sink.buffering = True  # as the service's log flusher does, on the loop's thread
    app = create_app(make_settings())
    try:
        async with TestClient(TestServer(app)) as client:
            rids = [
                (await client.get(path)).headers["X-Request-ID"]
                for path in ("/v1/info", "/v1/nope", "/livez")
            ]
            assert buf.getvalue() == b""  # waiting for the flush
            # An error flushed from another thread does not render the loop's records.
            other = threading.Thread(
                target=lambda: sink.write_line(b'{"event":"boom"}', urgent=True)
            )
            other.start()
            other.join()
            assert buf.getvalue() == b'{"event":"boom"}\n'
            # A scrape counts them (and queues their lines for the flush).
            requests = app[METRICS].http_requests
            generate_latest(app[METRICS].registry)
            assert requests.labels("GET", "/v1/info", "200").value == 1
            assert requests.labels("GET", "unmatched", "404").value == 1
            out = lines(buf)[1:]  # flushes on this (the owner) thread
            assert [(a["request_id"], a["status"], a["path"]) for a in out] == [
                (rids[0], 200, "/v1/info"),
                (rids[1], 404, "/v1/nope"),
                (rids[2], 200, "/livez"),
            ]
            assert all(0 < a["duration_ms"] < 5000 for a in out)
            # Switching buffering off writes whatever is still waiting (shutdown).
            rid = (await client.get("/livez")).headers["X-Request-ID"]
            sink.buffering = False
            assert lines(buf)[-1]["request_id"] == rid
    finally:
        sink.buffering = False


def test_access_log_line_fields_and_escaping() -> None:
    buf = io.BytesIO()
    log.configure(LogSettings(format="json", flush_interval=0), stream=buf)
    access = AccessLog(LogSettings(format="json"))
    access.log("GET", "/v1/info", "/v1/info", 200, 0.0015, "rid-1", "127.0.0.1", "ua")
    access.log("POST", '/v1/"r"', '/v1/users/"x\\', 404, 0.002, "rid-2", None, None)
    first, second = lines(buf)
    assert first == {
        "event": "access",
        "logger": "access",
        "level": "info",
        "timestamp": first["timestamp"],
        "request_id": "rid-1",
        "method": "GET",
        "route": "/v1/info",
        "path": "/v1/info",
        "status": 200,
        "duration_ms": 1.5,
        "remote": "127.0.0.1",
        "user_agent": "ua",
    }
    assert second["route"] == '/v1/"r"'
    assert second["path"] == '/v1/users/"x\\'
    assert second["remote"] is None
    assert second["user_agent"] is None


def _logging_app(**log_settings: Any) -> web.Application:
    app = create_app(make_settings(log=log_settings))

    async def chatty(request: web.Request) -> web.Response:
        log.get_logger("test.handler").info("in handler")
        logging.getLogger("aiohttp.server").warning("aiohttp record")
        logging.getLogger("asyncio").warning("asyncio record")
        await asyncio.sleep(0)
        return web.Response(text="ok")

    app.router.add_get("/chatty", chatty)
    return app


@pytest.mark.asyncio
async def test_request_id_in_every_line_of_a_request(log_output: io.BytesIO) -> None:
    async with TestClient(TestServer(_logging_app())) as client:
        resp = await client.get("/chatty", headers={"X-Request-ID": "req-abc.1"})
        assert resp.status == 200
        other = await client.get("/chatty")
        other_id = other.headers["X-Request-ID"]
    out = lines(log_output)
    mine = [line for line in out if line.get("request_id") == "req-abc.1"]
    assert {line["event"] for line in mine} == {
        "in handler",
        "aiohttp record",
        "asyncio record",
        "access",
    }
    by_logger = {line["logger"]: line for line in mine}
    assert {"test.handler", "aiohttp.server", "asyncio", "access"} <= set(by_logger)
    assert len([line for line in out if line.get("request_id") == other_id]) == 4
    # Nothing outside a request carries a request id.
    log.get_logger("after").info("outside")
    assert "request_id" not in lines(log_output)[-1]


@pytest.mark.asyncio
async def test_access_line_fields(log_output: io.BytesIO) -> None:
    async with TestClient(TestServer(create_app(make_settings()))) as client:
        resp = await client.get("/v1/info?x=1", headers={"User-Agent": "probe/1"})
        rid = resp.headers["X-Request-ID"]
    (access,) = [line for line in lines(log_output) if line["event"] == "access"]
    assert access["method"] == "GET"
    assert access["route"] == "/v1/info"
    assert access["path"] == "/v1/info?x=1"
    assert access["status"] == 200
    assert access["request_id"] == rid
    assert access["user_agent"] == "probe/1"
    assert access["remote"] == "127.0.0.1"
    assert 0 <= access["duration_ms"] < 5000


@pytest.mark.asyncio
async def test_hostile_header_value_yields_exactly_one_access_line(
    log_output: io.BytesIO,
) -> None:
    """Quotes, backslashes and U+2028 in a header end up inside one JSON string."""
    server = TestServer(create_app(make_settings()))
    await server.start_server()
    try:
        ua = 'x" , "event": "forged\\ \u2028 \u0085'
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"GET /livez HTTP/1.1\r\nHost: t\r\nConnection: close\r\nUser-Agent: "
            + ua.encode()
            + b"\r\n\r\n"
        )
        await writer.drain()
        head = await reader.read()
        writer.close()
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        await server.close()
    raw = [
        r for r in (log.sink().flush(), log_output.getvalue())[1].splitlines() if b'"access"' in r
    ]
    assert len(raw) == 1
    access = json.loads(raw[0])
    assert access["user_agent"] == ua
    assert access["event"] == "access"


def test_access_log_cr_lf_cannot_forge_a_line() -> None:
    """Even a CR/LF that reaches the access log (e.g. from another parser) stays escaped."""
    buf = io.BytesIO()
    log.configure(LogSettings(format="json", flush_interval=0), stream=buf)
    access = AccessLog(LogSettings(format="json"))
    forged = 'a\r\n{"event":"access","status":200}'
    access.log("GET", "/r", "/r\r\nx", 200, 0.001, "rid", "127.0.0.1", forged)
    out = lines(buf)
    assert len(out) == 1
    assert out[0]["user_agent"] == forged


def test_console_renderer_escapes_control_characters() -> None:
    buf = io.BytesIO()
    log.configure(LogSettings(format="console", flush_interval=0), stream=buf)
    log.get_logger("c").info("event\r\nforged", value="a\nb\x1b[31m")
    logging.getLogger("lib").warning("std\nlib")
    AccessLog(LogSettings(format="console")).log(
        "GET", "/r", "/r", 200, 0.001, "rid", None, "ua\r\nforged"
    )
    log.sink().flush()
    text = buf.getvalue().decode()
    assert text.count("\n") == 3, text
    assert "\x1b" not in text
    assert "\\x0a" in text


@pytest.mark.asyncio
async def test_access_log_switched_off(log_output: io.BytesIO) -> None:
    async with TestClient(
        TestServer(create_app(make_settings(log={"access_log": False})))
    ) as client:
        for _ in range(5):
            assert (await client.get("/livez")).status == 200
        assert (await client.get("/nope")).status == 404
    assert not [line for line in lines(log_output) if line["event"] == "access"]


@pytest.mark.asyncio
async def test_access_log_sampling_keeps_errors(log_output: io.BytesIO) -> None:
    n = 400
    async with TestClient(
        TestServer(create_app(make_settings(log={"access_log_sample": 0.25})))
    ) as client:
        for _ in range(n):
            assert (await client.get("/livez")).status == 200
        for _ in range(20):
            assert (await client.get("/nope")).status == 404
    access = [line for line in lines(log_output) if line["event"] == "access"]
    ok = [line for line in access if line["status"] == 200]
    errors = [line for line in access if line["status"] == 404]
    assert len(errors) == 20  # errors are always logged
    # Binomial(400, 0.25): mean 100, sd ~8.7; 50..150 is beyond 5 sd either way.
    assert 50 <= len(ok) <= 150, len(ok)


@pytest.mark.asyncio
async def test_console_access_log_samples_once() -> None:
    """Console lines go through the same batch as JSON ones and are sampled once, not twice."""
    buf = io.BytesIO()
    log.configure(LogSettings(format="console", flush_interval=0), stream=buf)
    n = 400
    async with TestClient(
        TestServer(create_app(make_settings(log={"format": "console", "access_log_sample": 0.25})))
    ) as client:
        for _ in range(n):
            assert (await client.get("/livez")).status == 200
    log.sink().flush()
    ok = [
        line
        for line in buf.getvalue().decode().splitlines()
        if "access" in line and "/livez" in line
    ]
    # Binomial(400, 0.25): mean 100, sd ~8.7 (sampled twice: mean 25); 50..150 is 5 sd.
    assert 50 <= len(ok) <= 150, len(ok)
