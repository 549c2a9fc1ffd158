"""POST /v1/events and GET /v1/events/stream through the real app and middleware."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.runtime.keys import METRICS, PIPELINE, SINK, STATE
from tests.support.fakes import MemorySink
from tests.support.settings import make_settings

EVENT = {"user_id": "u1", "type": "click", "payload": {"n": 1}}


def make_app(tmp_path: Path, sink: MemorySink | None = None, **pipeline: Any) -> web.Application:
    settings = make_settings(
        pipeline={"sink_path": str(tmp_path / "events.jsonl"), "flush_interval": 0.01, **pipeline},
        http={"max_body_bytes": 64 * 1024, "max_events": 50},
        log={"access_log": False},
    )
    app = create_app(settings)
    if sink is not None:
        app[SINK] = sink
    return app


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(make_app(tmp_path))) as c:
        yield c


def sink_ids(tmp_path: Path) -> list[str]:
    data = (tmp_path / "events.jsonl").read_bytes()
    return [json.loads(line)["id"] for line in data.splitlines()]


async def drain(client: TestClient[web.Request, web.Application]) -> None:
    await client.app[PIPELINE].drain(5)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "ctype", "count"),
    [
        (orjson.dumps(EVENT), "application/json", 1),
        (orjson.dumps([EVENT] * 3), "application/json; charset=utf-8", 3),
        (b"\n".join(orjson.dumps(EVENT) for _ in range(4)) + b"\n", "application/x-ndjson", 4),
    ],
)
async def test_accepted_events_get_ids_that_are_in_the_sink(
    client: TestClient[web.Request, web.Application],
    tmp_path: Path,
    body: bytes,
    ctype: str,
    count: int,
) -> None:
    resp = await client.post("/v1/events", data=body, headers={"Content-Type": ctype})
    assert resp.status == 202
    doc = await resp.json()
    assert doc["accepted"] == count
    assert len(set(doc["ids"])) == count
    await drain(client)
    assert sink_ids(tmp_path) == doc["ids"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "ctype", "status", "field", "index"),
    [
        (b"{not json", "application/json", 400, None, None),
        (b'{"user_id":"u","type":"t"}\n{oops', "application/x-ndjson", 400, None, 1),
        (b"<xml/>", "text/xml", 415, None, None),
        (b"{}", "", 415, None, None),
        (
            orjson.dumps([EVENT, {"user_id": "u", "type": "t", "colour": 1}]),
            "application/json",
            422,
            "colour",
            1,
        ),
        (
            orjson.dumps([EVENT, EVENT, {"user_id": "", "type": "t"}]),
            "application/json",
            422,
            "user_id",
            2,
        ),
        (orjson.dumps({"type": "t"}), "application/json", 422, "user_id", None),
        (orjson.dumps([EVENT] * 51), "application/json", 413, None, None),
        (b"x" * (64 * 1024 + 1), "application/json", 413, None, None),
    ],
)
async def test_bad_requests_name_the_problem_and_queue_nothing(
    client: TestClient[web.Request, web.Application],
    tmp_path: Path,
    body: bytes,
    ctype: str,
    status: int,
    field: str | None,
    index: int | None,
) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    resp = await client.post("/v1/events", data=body, headers=headers)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    doc = await resp.json()
    if status in (400, 422) and (field or index is not None):
        assert doc["errors"][0]["field"] == field
        assert doc["errors"][0]["index"] == index
    pipeline = client.app[PIPELINE]
    assert pipeline.accepted == 0
    await drain(client)
    assert sink_ids(tmp_path) == []


@pytest.mark.asyncio
async def test_draining_answers_503(client: TestClient[web.Request, web.Application]) -> None:
    client.app[STATE].draining = True
    resp = await client.post("/v1/events", json=EVENT)
    assert resp.status == 503
    client.app[STATE].draining = False
    await drain(client)  # intake closed by the pipeline itself
    resp = await client.post("/v1/events", json=EVENT)
    assert resp.status == 503


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@pytest.mark.asyncio
async def test_a_stalled_sink_sheds_load_fast_with_bounded_memory(tmp_path: Path) -> None:
    """A stalled sink: 429 + Retry-After, p99 under 20 ms, RSS flat over a 100,000-event burst.

    The p99 bound is relaxed to twice the p99 of /livez measured alongside
    when the machine is too loaded for 20 ms to mean anything.
    """
    sink = MemorySink(stalled=True)
    app = make_app(tmp_path, sink, ingest_capacity=2000, enrich_capacity=2000, batch_size=500)
    proc = psutil.Process()
    batch = orjson.dumps([EVENT] * 50)
    headers = {"Content-Type": "application/json"}
    async with TestClient(TestServer(app)) as client:
        accepted = 0
        queued = -1
        while queued != app[PIPELINE].queued():  # fill every queue, until nothing moves
            queued = app[PIPELINE].queued()
            while True:
                resp = await client.post("/v1/events", data=batch, headers=headers)
                if resp.status == 429:
                    break
                assert resp.status == 202
                accepted += 50
            await asyncio.sleep(0.05)  # the workers take what they can hold
        for _ in range(100):  # warm up the refusal path before measuring memory
            await (await client.post("/v1/events", data=batch, headers=headers)).read()
        rss_full = proc.memory_info().rss
        shed, live = [], []
        statuses: dict[int, int] = {}
        for _ in range(100_000 // 50):
            t0 = time.perf_counter()
            resp = await client.post("/v1/events", data=batch, headers=headers)
            shed.append(time.perf_counter() - t0)
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 1
            await resp.read()
            if len(shed) % 10 == 0:
                t0 = time.perf_counter()
                await (await client.get("/livez")).read()
                live.append(time.perf_counter() - t0)
        rss_after = proc.memory_info().rss
        assert statuses.get(429, 0) >= 1900, statuses  # a few may fit as the writer batches
        assert p99(shed) < max(0.020, 2 * p99(live)), (p99(shed), p99(live))
        growth_mb = (rss_after - rss_full) / 2**20
        print(
            f"\nRSS full: {rss_full / 2**20:.1f} MB, after 100,000-event burst: "
            f"{rss_after / 2**20:.1f} MB (+{growth_mb:.1f}); 429 p99 "
            f"{p99(shed) * 1000:.2f} ms, /livez p99 {p99(live) * 1000:.2f} ms"
        )
        assert growth_mb < 16
        metrics = app[METRICS]
        assert metrics.pipeline_rejected.labels("full").value >= 1900
        assert metrics.queue_depth.collect().samples  # depth is exported
        sink.running.set()
        await app[PIPELINE].drain(10)
        assert app[PIPELINE].summary()["dropped"] == 0
        assert len(sink.lines) == app[PIPELINE].accepted >= accepted


async def read_ndjson(resp: Any, n: int) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    while len(lines) < n:
        line = await resp.content.readline()
        assert line, "stream ended early"
        lines.append(json.loads(line))
    return lines


@pytest.mark.asyncio
async def test_a_follower_sees_events_as_they_reach_the_sink(
    client: TestClient[web.Request, web.Application],
) -> None:
    stream = await client.get("/v1/events/stream")
    assert stream.status == 200
    assert stream.content_type == "application/x-ndjson"
    await asyncio.sleep(0.05)
    resp = await client.post("/v1/events", json=[EVENT] * 5)
    ids = (await resp.json())["ids"]
    got = await asyncio.wait_for(read_ndjson(stream, 5), 5)
    assert [line["id"] for line in got] == ids
    # Shutdown ends the stream cleanly.
    client.app[STATE].draining = True
    assert await asyncio.wait_for(stream.content.read(), 5) == b""
    client.app[STATE].draining = False
    await drain(client)


@pytest.mark.asyncio
async def test_a_follower_that_stops_reading_is_cut_off(tmp_path: Path) -> None:
    app = make_app(tmp_path, subscriber_buffer=100)
    async with TestClient(TestServer(app)) as client:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", client.port))
        sock.sendall(b"GET /v1/events/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        metrics = app[METRICS]
        subscribers = metrics.stream_subscribers.collect().samples
        big = [{"user_id": "u", "type": "t", "payload": {"pad": "x" * 1000}}] * 50
        deadline = time.monotonic() + 10
        try:
            while metrics.stream_cutoffs.labels().value == 0:
                assert time.monotonic() < deadline, "the slow follower was never cut off"
                resp = await client.post("/v1/events", json=big)
                assert resp.status == 202
                await asyncio.sleep(0.01)
        finally:
            sock.close()
        assert subscribers  # the gauge exists
        # The pipeline kept going and lost nothing.
        await app[PIPELINE].drain(5)
        assert app[PIPELINE].summary()["dropped"] == 0
        assert len(app[PIPELINE].hub) == 0
