"""The request-header deadline: slowloris closed, slow bodies and idle keep-alive left alone."""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest

from tests.support.process import running_service, scrape
from tests.support.slowclients import beside_normal_traffic, read_until_closed, serving, trickle

HEADER_TIMEOUT = 0.5


async def _closed_after(
    reader: asyncio.StreamReader, limit: float, start: float | None = None
) -> float:
    """Seconds (since ``start``, default now) until the server closed the connection."""
    start = time.monotonic() if start is None else start
    await read_until_closed(reader, limit)
    return time.monotonic() - start


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return status, await reader.readexactly(length)


@pytest.mark.asyncio
async def test_trickled_header_is_cut_at_the_deadline() -> None:
    async with serving(header_timeout=HEADER_TIMEOUT) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(b"GET /livez HTTP/1.1\r\nHost: t\r\n")
        trickler = asyncio.create_task(trickle(writer, 0.05))
        took = await _closed_after(reader, 5)
        trickler.cancel()
        writer.close()
        assert HEADER_TIMEOUT * 0.8 <= took < HEADER_TIMEOUT + 1.0
        assert served.header_timeouts.value == 1


@pytest.mark.asyncio
async def test_silent_connection_is_cut_at_the_deadline() -> None:
    async with serving(header_timeout=HEADER_TIMEOUT) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        took = await _closed_after(reader, 5)
        writer.close()
        assert took < HEADER_TIMEOUT + 1.0
        assert served.header_timeouts.value == 1


@pytest.mark.asyncio
async def test_slow_body_upload_is_not_cut() -> None:
    async with serving(header_timeout=HEADER_TIMEOUT) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\n")
        for _ in range(8):  # 8 x 0.2 s: three header timeouts long
            await asyncio.sleep(0.2)
            writer.write(b"b")
        status, body = await _response(reader)
        writer.close()
        assert status == 200
        assert body == b'{"size": 8}'
        assert served.header_timeouts.value == 0


@pytest.mark.asyncio
async def test_idle_keepalive_is_not_cut_but_a_late_second_header_is() -> None:
    async with serving(header_timeout=HEADER_TIMEOUT) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await _response(reader))[0] == 200
        await asyncio.sleep(HEADER_TIMEOUT * 3)  # idle between requests: fine
        writer.write(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await _response(reader))[0] == 200
        assert served.header_timeouts.value == 0
        writer.write(b"GET /livez HTTP/1.1\r\n")  # ...but this head never ends
        took = await _closed_after(reader, 5)
        writer.close()
        assert took < HEADER_TIMEOUT + 1.0
        assert served.header_timeouts.value == 1


SLOWLORIS = 300


async def _slowloris(port: int, timeout: float) -> tuple[list[float], list[float]]:
    """300 trickling connections and a client that keeps making normal requests."""

    async def loris() -> float:
        # Timed from before the connect: the server's clock starts at accept.
        start = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/info HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        trickler = asyncio.create_task(trickle(writer, 0.25))
        try:
            return await _closed_after(reader, timeout + 10, start)
        finally:
            trickler.cancel()
            writer.close()

    return await beside_normal_traffic(port, SLOWLORIS, loris)


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_300_slowloris_connections_closed_while_serving(loop: str) -> None:
    timeout = 1.0
    with running_service(
        env={
            "SERVICE_HTTP__HEADER_TIMEOUT": str(timeout),
            "SERVICE_LOOP__KIND": loop,
            "SERVICE_LOG__ACCESS_LOG": "false",
        }
    ) as svc:
        closed, latencies = asyncio.run(_slowloris(svc.ports["http"], timeout))
        metrics = scrape(svc.url("/metrics", "admin"))
        assert svc.stop() == 0
    assert len(closed) == SLOWLORIS
    assert max(closed) < timeout + 2, sorted(closed)[-5:]
    assert min(closed) >= timeout * 0.9
    assert len(latencies) >= 5
    assert max(latencies) < 1.0, max(latencies)
    assert metrics["service_http_header_timeouts_total"] >= SLOWLORIS


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/info HTTP/1.1\r\nHost: x\r\nUser-Agent: a\x0bb\r\n\r\n",  # a control byte
        b"GARBAGE\r\n\r\n",  # no request line
        b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n",  # header too big
    ],
    ids=["control-byte", "garbage", "huge-header"],
)
async def test_a_request_the_parser_refuses_is_a_problem_and_one_info_line(
    request_bytes: bytes,
    log_output: io.BytesIO,
) -> None:
    """No text/plain answer, no error-level traceback per bad client: 400 problem+json."""
    async with serving(header_timeout=HEADER_TIMEOUT) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(request_bytes)
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.read()
        writer.close()
    assert head.split(b" ", 2)[1] == b"400"
    assert b"application/problem+json" in head
    doc = json.loads(body)
    assert doc["status"] == 400
    assert doc["detail"].startswith("The request is not valid HTTP/1.1")
    assert "\n" not in doc["detail"]
    lines = [json.loads(line) for line in log_output.getvalue().splitlines()]
    refused = [line for line in lines if line["event"] == "request refused by the HTTP parser"]
    assert len(refused) == 1
    assert refused[0]["level"] == "info"
    assert not [line for line in lines if line["level"] in ("error", "critical")]
