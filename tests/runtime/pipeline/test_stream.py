"""StreamHub: one shared chunk per batch, bounded buffers, slow followers cut off."""

from __future__ import annotations

import asyncio

import pytest

from service.runtime.metrics import Metrics
from service.runtime.pipeline.stream import StreamHub


@pytest.mark.asyncio
async def test_a_batch_is_one_ndjson_chunk_for_every_follower() -> None:
    hub = StreamHub(Metrics(), limit=10)
    with hub.subscribe() as a, hub.subscribe() as b:
        hub.publish([b'{"id":"1"}', b'{"id":"2"}'])
        assert a.pending == b.pending == 2
        chunks = a.chunks(lambda: False, poll=0.01)
        assert await anext(chunks) == b'{"id":"1"}\n{"id":"2"}\n'
        await chunks.aclose()
    assert len(hub) == 0


@pytest.mark.asyncio
async def test_a_follower_over_its_limit_is_cut_off_and_counted() -> None:
    metrics = Metrics()
    hub = StreamHub(metrics, limit=3)
    calls: list[str] = []
    with hub.subscribe(on_cutoff=lambda: calls.append("cut")) as sub:
        hub.publish([b"1", b"2"])
        hub.publish([b"3", b"4"])  # 4 > 3: cut off, buffer released
        assert sub.cut_off
        assert sub.pending == 0
        assert calls == ["cut"]
        assert len(hub) == 0
        hub.publish([b"5"])  # no longer delivered, no second count
        assert [c async for c in sub.chunks(lambda: False)] == []
    assert metrics.stream_cutoffs.labels().value == 1


@pytest.mark.asyncio
async def test_an_empty_buffer_takes_a_batch_larger_than_the_limit() -> None:
    hub = StreamHub(Metrics(), limit=2)
    with hub.subscribe() as sub:
        hub.publish([b"1", b"2", b"3"])
        assert not sub.cut_off
        assert sub.pending == 3


@pytest.mark.asyncio
async def test_an_idle_follower_notices_stop_within_the_poll_interval() -> None:
    hub = StreamHub(Metrics(), limit=2)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with hub.subscribe() as sub:
        chunks = [c async for c in sub.chunks(lambda: loop.time() - began > 0.1, poll=0.02)]
    assert chunks == []
    assert 0.1 <= loop.time() - began < 1.0
