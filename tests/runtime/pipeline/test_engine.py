"""The pipeline in-process: intake, enrichment, batching, retries, drain, subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.domain.enrich import LocalUsers
from service.domain.events import Event
from service.domain.tcp_events import EventLines
from service.runtime.errors import IntakeClosed, IntakeFull
from service.runtime.ids import IdSequence, process_prefix
from service.runtime.metrics import Metrics
from service.runtime.pipeline import WORKER_BATCH, Pipeline
from service.runtime.pipeline.sinks import FileSink
from service.runtime.settings import PipelineSettings
from service.runtime.tcp import TcpServer
from tests.support.fakes import MemorySink, demo_pipeline
from tests.support.settings import make_settings


class FailingUsers:
    """A lookup that raises for some ids, answers junk for others, and can be slow."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    async def get_user(self, user_id: str) -> dict[str, Any] | None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if user_id == "boom":
            raise ConnectionError("users is down")
        if user_id == "odd":
            return {1: "not a JSON object key"}  # type: ignore[dict-item]
        return None if user_id == "ghost" else {"id": user_id}

    def refusing(self) -> bool:
        return False

    def cached(self, user_id: str, default: Any) -> Any:
        return default


def settings(**overrides: Any) -> PipelineSettings:
    base: dict[str, Any] = {
        "ingest_capacity": 100,
        "enrich_capacity": 100,
        "enrich_workers": 2,
        "batch_size": 50,
        "flush_interval": 0.01,
        "subscriber_buffer": 10,
    }
    base.update(overrides)
    return PipelineSettings(**base)


def ev(user: str = "u1", kind: str = "click") -> Event:
    return {"user_id": user, "type": kind}


@contextlib.asynccontextmanager
async def stalled(
    metrics: Metrics | None = None, **overrides: Any
) -> AsyncIterator[tuple[Pipeline, MemorySink]]:
    """A demo pipeline whose sink takes nothing until the test says ``sink.running.set()``."""
    sink = MemorySink(stalled=True)
    async with demo_pipeline(settings(**overrides), metrics or Metrics(), LocalUsers(), sink) as p:
        yield p, sink


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def fill(p: Pipeline) -> int:
    """Offer events until every queue and the stalled sink's batch are full; return how many."""
    accepted = 0
    while True:
        try:
            p.offer_nowait(ev())
            accepted += 1
            continue
        except IntakeFull:
            await asyncio.sleep(0.02)
        if p.full:
            return accepted


@pytest.mark.asyncio
async def test_acknowledged_events_reach_the_sink_with_their_ids() -> None:
    sink = MemorySink()
    async with demo_pipeline(settings(), Metrics(), LocalUsers(), sink) as p:
        ids = [p.offer_nowait(ev(f"u{i}")) for i in range(5)]
        ids += p.offer_batch_nowait([ev("x"), ev("y")])
        ids.append(await p.offer(ev("z"), timeout=1))
        await p.drain(5)
    assert sorted(r["id"] for r in sink.records()) == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(r["enrichment"] == "ok" for r in sink.records())
    assert all(r["user"]["id"] == r["user_id"] for r in sink.records())
    assert p.summary() == {"accepted": 8, "delivered": 8, "dropped": 0}
    assert sink.closed
    assert sink.flushes >= 1


@pytest.mark.asyncio
async def test_enrichment_failures_never_lose_the_event() -> None:
    sink = MemorySink()
    async with demo_pipeline(settings(), Metrics(), FailingUsers(), sink) as p:
        p.offer_batch_nowait([ev("boom"), ev("ghost"), ev("odd"), ev("fine")])
        await p.drain(5)
    by_user = {r["user_id"]: r for r in sink.records()}
    assert by_user["boom"]["enrichment"] == "failed"
    assert by_user["boom"]["user"] is None
    assert by_user["ghost"]["enrichment"] == "unknown_user"
    assert by_user["odd"]["enrichment"] == "failed"  # lookup answered something not JSON
    assert by_user["fine"]["enrichment"] == "ok"
    assert p.summary()["dropped"] == 0


@pytest.mark.asyncio
async def test_batches_are_bounded_by_size() -> None:
    async with stalled(batch_size=7) as (p, sink):
        p.offer_batch_nowait([ev() for _ in range(30)])
        await asyncio.sleep(0.05)
        sink.running.set()
        await p.drain(5)
    assert max(sink.batches) <= 7
    assert sum(sink.batches) == 30


@pytest.mark.asyncio
async def test_a_batch_is_all_or_nothing_when_the_ingest_queue_is_short_of_room() -> None:
    metrics = Metrics()
    async with stalled(metrics, ingest_capacity=10, enrich_capacity=5, batch_size=5) as (p, sink):
        # Fill everything downstream of intake, then the ingest queue itself.
        accepted = await fill(p)
        before = p.accepted
        with pytest.raises(IntakeFull) as info:
            p.offer_batch_nowait([ev(), ev()])
        assert info.value.needed == 2
        assert info.value.retry_after >= 1
        assert p.accepted == before
        with pytest.raises(IntakeFull):
            p.ensure_room()
        sink.running.set()
        await p.drain(5)
    assert p.summary() == {"accepted": accepted, "delivered": accepted, "dropped": 0}
    rejected = metrics.pipeline_rejected.labels("full").value
    assert rejected >= 3


@pytest.mark.asyncio
async def test_offer_waits_for_room_then_gives_up() -> None:
    async with stalled(ingest_capacity=2, enrich_capacity=1, batch_size=1, enrich_workers=1) as (
        p,
        sink,
    ):
        await fill(p)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(IntakeFull):
            await p.offer(ev(), timeout=0.1)
        assert loop.time() - started >= 0.09
        # Room appears while waiting: the event is taken.
        waiting = asyncio.create_task(p.offer(ev("late"), timeout=5))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        sink.running.set()
        late_id = await waiting
        await p.drain(5)
    assert late_id in sink.ids()
    assert p.summary()["dropped"] == 0


@pytest.mark.asyncio
async def test_drain_refuses_waiting_and_new_offers() -> None:
    async with stalled(ingest_capacity=1, enrich_capacity=1, batch_size=1, enrich_workers=1) as (
        p,
        sink,
    ):
        await fill(p)
        waiting = asyncio.create_task(p.offer(ev(), timeout=30))
        await asyncio.sleep(0.01)
        drain = asyncio.create_task(p.drain(5))
        with pytest.raises(IntakeClosed):
            await waiting
        with pytest.raises(IntakeClosed):
            p.offer_nowait(ev())
        with pytest.raises(IntakeClosed):
            p.offer_batch_nowait([ev()])
        assert p.closed
        sink.running.set()
        await drain
    assert p.summary()["dropped"] == 0
    assert p.summary()["delivered"] == p.accepted


@pytest.mark.asyncio
async def test_a_failing_sink_is_retried_and_nothing_is_written_twice() -> None:
    sink = MemorySink(fail_times=2)
    metrics = Metrics()
    async with demo_pipeline(settings(), metrics, LocalUsers(), sink) as p:
        ids = p.offer_batch_nowait([ev() for _ in range(10)])
        await p.drain(10)
    assert sorted(sink.ids()) == sorted(ids)
    assert metrics.sink_failures.labels("memory").value == 2
    assert p.summary()["dropped"] == 0


@pytest.mark.asyncio
async def test_a_slow_lookup_is_skipped_in_the_second_half_of_the_drain() -> None:
    """Past half the drain budget, queued events are written unenriched, not lost.

    (A lookup owns its deadline: the one in flight is awaited to its end.)
    """
    sink = MemorySink()
    async with demo_pipeline(
        settings(enrich_workers=1), Metrics(), FailingUsers(delay=0.3), sink
    ) as p:
        p.offer_batch_nowait([ev() for _ in range(5)])
        await asyncio.sleep(0.01)
        await p.drain(0.4)
    outcomes = sorted(r["enrichment"] for r in sink.records())
    assert outcomes == ["ok", "skipped", "skipped", "skipped", "skipped"]
    assert p.summary() == {"accepted": 5, "delivered": 5, "dropped": 0}


@pytest.mark.asyncio
async def test_a_stalled_sink_at_shutdown_counts_dropped_events() -> None:
    metrics = Metrics()
    async with stalled(metrics) as (p, _):
        p.offer_batch_nowait([ev() for _ in range(10)])
        await p.drain(0.2)
        assert p.summary() == {"accepted": 10, "delivered": 0, "dropped": 10}
    assert metrics.pipeline_events.labels("sink", "dropped").value == 10


@pytest.mark.asyncio
async def test_subscribers_follow_delivered_events_and_slow_ones_are_cut_off() -> None:
    sink = MemorySink()
    metrics = Metrics()
    cut: list[bool] = []
    async with demo_pipeline(
        settings(subscriber_buffer=10, batch_size=5), metrics, LocalUsers(), sink
    ) as p:
        with p.hub.subscribe() as fast, p.hub.subscribe(on_cutoff=lambda: cut.append(True)):
            got: list[bytes] = []
            reader_done = asyncio.Event()

            async def read() -> None:
                async for chunk in fast.chunks(lambda: reader_done.is_set(), poll=0.01):
                    got.extend(chunk.splitlines())

            async with asyncio.TaskGroup() as tg:
                tg.create_task(read(), name="stream:test-reader")
                for _ in range(8):
                    p.offer_batch_nowait([ev() for _ in range(5)])
                    await wait_for(lambda: p.delivered == p.accepted)
                    await asyncio.sleep(0)
                await wait_for(lambda: len(got) == 40)
                reader_done.set()
            assert len(p.hub) == 1  # the slow one is gone
        await p.drain(5)
    assert cut == [True]
    assert metrics.stream_cutoffs.labels().value == 1
    assert sorted(json.loads(line)["id"] for line in got) == sorted(sink.ids())


@pytest.mark.asyncio
async def test_metrics_show_queues_outcomes_and_latency() -> None:
    metrics = Metrics()
    sink = MemorySink()
    async with demo_pipeline(settings(ingest_capacity=123), metrics, FailingUsers(), sink) as p:
        p.offer_batch_nowait([ev("boom"), ev("ok")])
        p.count_invalid(3)
        await p.drain(5)
    assert metrics.queue_capacity.labels("ingest").value == 123
    assert metrics.queue_capacity.labels("enrich").value == 100
    assert metrics.pipeline_events.labels("ingest", "accepted").value == 2
    assert metrics.pipeline_events.labels("enrich", "failed").value == 1
    assert metrics.pipeline_events.labels("enrich", "ok").value == 1
    assert metrics.pipeline_events.labels("sink", "delivered").value == 2
    assert metrics.pipeline_rejected.labels("invalid").value == 3
    assert metrics.pipeline_latency.labels().count == 2
    assert metrics.sink_batch.labels("memory").count >= 1
    text = metrics.registry.collect()
    names = {m.name for m in text}
    assert "service_pipeline_queue_depth" in names


@pytest.mark.asyncio
async def test_workers_are_named_tasks_in_the_pipeline_group() -> None:
    async with demo_pipeline(
        settings(enrich_workers=3), Metrics(), LocalUsers(), MemorySink()
    ) as p:
        await asyncio.sleep(0)
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert {"pipeline:run", "pipeline:enrich-0", "pipeline:enrich-2", "pipeline:sink"} <= names
        await p.drain(5)
    assert not any(
        t.get_name().startswith("pipeline:") and not t.done() for t in asyncio.all_tasks()
    )


@pytest.mark.asyncio
async def test_end_to_end_with_the_file_sink(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    async with demo_pipeline(settings(), Metrics(), LocalUsers(), FileSink(path)) as p:
        ids = p.offer_batch_nowait([ev(f"u{i}") for i in range(60)])
        await p.drain(5)
    lines = path.read_bytes().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(ids)


def test_event_ids_are_unique_across_generators() -> None:
    a = IdSequence(process_prefix(random_bytes=4, with_time=True))
    b = IdSequence(process_prefix(random_bytes=4, with_time=True))
    ids = {a.new() for _ in range(1000)} | {b.new() for _ in range(1000)}
    assert len(ids) == 2000
    # Ids made in bulk (HTTP batches) continue the same sequence.
    bulk = [*a.many(500), a.new(), *a.many(3)]
    assert len(set(bulk) | ids) == 2504


@pytest.mark.asyncio
async def test_tcp_clients_stop_being_read_while_the_sink_is_stalled() -> None:
    """TCP backpressure end to end: a stalled sink fills the queues, the server stops reading.

    The client's 40,000 lines then stay in its own socket buffers (the
    service holds at most its queues' capacity); once the sink moves again,
    every line is answered and every ``OK <id>`` is in the sink.
    """
    metrics = Metrics()
    tcp = make_settings(tcp={"overload_timeout": 0.2}).tcp
    async with stalled(metrics, ingest_capacity=200, enrich_capacity=200, batch_size=100) as (
        p,
        sink,
    ):
        server = TcpServer(tcp, metrics, EventLines(p, 5.0))
        port = (await server.start())[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            line = orjson.dumps({**ev(), "payload": {"pad": "x" * 600}}) + b"\n"
            total = 40_000  # 25 MB: more than loopback's socket buffers hold
            writer.write(line * total)
            await wait_for(lambda: p.full)
            await asyncio.sleep(0.5)
            # Held by the service: the queues, one batch per worker and the
            # stalled sink's batch, no more.
            assert p.accepted <= 200 + 200 + 2 * WORKER_BATCH + 100
            unread = writer.transport.get_write_buffer_size()
            assert unread > len(line) * total * 0.3, unread  # the server stopped reading
            sink.running.set()
            answers: list[bytes] = []
            async with asyncio.timeout(60):
                while len(answers) < total:
                    answers.append(await reader.readline())
        finally:
            writer.close()
            await server.finish(1)
        await p.drain(10)
    ok = [a[3:].strip().decode() for a in answers if a.startswith(b"OK ")]
    assert all(a.startswith((b"OK ", b"ERR overloaded")) for a in answers)
    assert sorted(ok) == sorted(sink.ids())
    assert len(ok) > total * 0.9


@pytest.mark.asyncio
async def test_workers_let_the_loop_run_between_batches() -> None:
    """A burst of work never holds the loop for more than one batch at a time."""
    ticks_while_busy = 0

    async def ticker(p: Pipeline) -> None:
        nonlocal ticks_while_busy
        while True:
            await asyncio.sleep(0)
            ticks_while_busy += p.queued() > 0

    async with demo_pipeline(
        settings(
            ingest_capacity=20_000, enrich_capacity=20_000, batch_size=5_000, enrich_workers=1
        ),
        Metrics(),
        LocalUsers(),
        MemorySink(),
    ) as p:
        p.offer_batch_nowait([ev(f"u{i % 50}") for i in range(10 * WORKER_BATCH)])
        counting = asyncio.create_task(ticker(p), name="test:ticker")
        await wait_for(lambda: p.queued() == 0)
        counting.cancel()
        await p.drain(5)
    # Ten batches through one worker, each followed by a yield: the ticker ran
    # between them (without the yields it runs once or twice in all).
    assert ticks_while_busy >= 5
