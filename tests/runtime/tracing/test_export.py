"""The export queue: drops and failures counted, a failing collector logged once a minute,
a hanging one never holding up the loop or the shutdown beyond its bound."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags

from service.runtime.tracing.export import ExportQueue
from service.runtime.tracing.provider import service_resource
from service.runtime.tracing.spans import MAX_ATTRIBUTES, LightSpan


def spans(n: int) -> list[ReadableSpan]:
    return [ReadableSpan(f"s{i}") for i in range(n)]


class Failing(SpanExporter):
    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        if self.calls % 2:
            raise ConnectionRefusedError("collector down")
        return SpanExportResult.FAILURE


class Hanging(SpanExporter):
    def __init__(self) -> None:
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        return SpanExportResult.SUCCESS


def test_spans_over_the_queue_size_are_dropped_and_counted() -> None:
    exporter = InMemorySpanExporter()
    queue = ExportQueue(exporter, max_queue=10, batch_size=5, schedule_delay=60)
    queue.submit(spans(8))
    queue.submit(spans(4))
    queue.on_end(spans(1)[0])
    assert (len(queue), queue.dropped) == (10, 3)
    queue.start()
    assert queue.force_flush(5000)
    assert len(exporter.get_finished_spans()) == 10
    assert queue.exported == 10
    queue.shutdown()


def test_a_full_batch_is_exported_without_waiting_for_the_delay() -> None:
    exporter = InMemorySpanExporter()
    queue = ExportQueue(exporter, max_queue=100, batch_size=5, schedule_delay=60)
    queue.start()
    queue.submit(spans(5))
    deadline = time.monotonic() + 5
    while len(exporter.get_finished_spans()) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(exporter.get_finished_spans()) == 5
    queue.shutdown()


def test_failures_are_counted_and_logged_once_a_minute(log_output: io.BytesIO) -> None:
    queue = ExportQueue(Failing(), max_queue=100, batch_size=2, schedule_delay=60)
    queue.start()
    for _ in range(4):
        queue.submit(spans(2))
        assert queue.force_flush(5000)
    assert queue.failures == 4
    assert queue.exported == 0
    lines = [json.loads(x) for x in log_output.getvalue().splitlines()]
    failed = [x for x in lines if x["event"] == "span export failed"]
    assert len(failed) == 1
    assert "collector down" in failed[0]["reason"]
    queue.shutdown()


@pytest.mark.asyncio
async def test_a_hanging_collector_blocks_neither_the_loop_nor_the_shutdown() -> None:
    exporter = Hanging()
    queue = ExportQueue(exporter, max_queue=4, batch_size=2, schedule_delay=0.01)
    queue.start()
    queue.submit(spans(2))
    await asyncio.sleep(0.1)  # the thread is now stuck in export
    started = time.perf_counter()
    queue.submit(spans(10))  # never waits for the export (10 s)
    assert time.perf_counter() - started < 0.5
    assert queue.dropped == 6
    started = time.perf_counter()
    await queue.close(0.2)
    assert 0.15 < time.perf_counter() - started < 1.0
    queue.submit(spans(1))  # closed: dropped
    assert queue.dropped == 7
    exporter.release.set()


def test_light_span_exports_what_was_recorded() -> None:
    ctx = SpanContext(0xABC, 0xDEF, False, TraceFlags(1))
    parent = SpanContext(0xABC, 0x123, True, TraceFlags(1))
    ended: list[LightSpan] = []
    span = LightSpan.begin(ctx, "work", SpanKind.INTERNAL, {"a": 1}, ended.append, parent=parent)
    assert span.is_recording()
    span.set_attribute("b", "two")
    for i in range(MAX_ATTRIBUTES + 5):
        span.set_attribute(f"k{i}", i)
    span.add_event("step", {"n": 1})
    try:
        raise ValueError("bad")
    except ValueError as exc:
        span.record_exception(exc)
    span.fail("it failed")
    span.set_status(StatusCode.ERROR, "replaced")
    span.end()
    span.end()  # once only
    assert ended == [span]
    assert not span.is_recording()
    readable = span.readable(service_resource("svc", "1.0"), InstrumentationScope("test"))
    assert readable.name == "work"
    assert readable.parent == parent
    assert readable.context == ctx
    assert readable.attributes is not None
    assert len(readable.attributes) == MAX_ATTRIBUTES
    assert readable.attributes["b"] == "two"
    assert [e.name for e in readable.events] == ["step", "exception"]
    assert readable.events[1].attributes["exception.type"] == "ValueError"  # type: ignore[index]
    assert readable.status.description == "replaced"
    assert readable.resource.attributes["service.name"] == "svc"
    assert readable.end_time is not None
    assert readable.start_time is not None
    assert readable.end_time >= readable.start_time
