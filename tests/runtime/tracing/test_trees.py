"""The shape of the traces, with the SDK's in-memory exporter: one trace across the path."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.app import create_app
from service.domain.tcp_events import EventLines
from service.runtime.admin import create_admin_app
from service.runtime.downstream import Deadline, DownstreamError
from service.runtime.keys import TRACING
from service.runtime.log import get_logger
from service.runtime.metrics import Metrics
from service.runtime.offload import Offload
from service.runtime.pipeline import Pipeline, Stage
from service.runtime.settings import OffloadSettings
from service.runtime.tcp import TcpServer
from service.runtime.tracing import TraceConfig
from service.runtime.tracing.core import Tracing
from tests.support.fakes import MemorySink
from tests.support.process import ROOT
from tests.support.settings import make_settings
from tests.support.stubs import Stub, running_stubs, started_client, wait_for
from tests.support.tracing import by_name, hex_ids, memory_exporter, one

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CALLER_TRACE, CALLER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


async def logged_route(request: web.Request) -> web.Response:
    get_logger("test").info("inside the request")
    return web.json_response({})


@contextlib.asynccontextmanager
async def traced_app(
    users: Stub | None = None, orders: Stub | None = None, **downstream: Any
) -> AsyncIterator[TestClient[Any, Any]]:
    urls = {"users_url": users.url, "orders_url": orders.url} if users and orders else {}
    settings = make_settings(tracing={"enabled": True}, downstream={**urls, **downstream})
    app = create_app(settings)
    app.router.add_get("/t/log", logged_route)
    async with TestClient(TestServer(app)) as client:
        yield client
    # Leaving it ran the app's cleanup: the tracing closed, every span exported.


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Any:
    with memory_exporter(monkeypatch) as exporter:
        yield exporter


@pytest.mark.asyncio
async def test_summary_is_one_trace_with_both_calls_in_parallel_under_the_request(
    spans: InMemorySpanExporter,
) -> None:
    async with (
        running_stubs(latency_ms=50) as (users, orders),
        traced_app(users, orders) as client,
    ):
        users.knobs.latency_ms = 50
        resp = await client.get(
            "/v1/users/u42/summary", headers={"traceparent": CALLER, "tracestate": "vendor=abc"}
        )
        assert resp.status == 200
    done = spans.get_finished_spans()
    server = one(done, "GET /v1/users/{user_id}/summary")
    assert all(s.context.trace_state.get("vendor") == "abc" for s in done)  # type: ignore[union-attr]
    assert server.kind is SpanKind.SERVER
    trace_id, server_id, parent = hex_ids(server)
    assert (trace_id, parent) == (CALLER_TRACE, CALLER_SPAN)
    assert server.parent is not None
    assert server.parent.is_remote
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/v1/users/{user_id}/summary"
    assert server.attributes["http.response.status_code"] == 200
    calls = {name: one(done, f"GET {name}") for name in ("users", "orders")}
    for name, call in calls.items():
        assert call.kind is SpanKind.CLIENT
        assert hex_ids(call)[0] == trace_id
        assert hex_ids(call)[2] == server_id
        assert call.attributes is not None
        assert call.attributes["downstream.outcome"] == "ok"
        # One attempt, its child: the span whose context went downstream.
        attempts = [s for s in by_name(done, "GET") if hex_ids(s)[2] == hex_ids(call)[1]]
        assert len(attempts) == 1
        stub = users if name == "users" else orders
        sent = list(stub.stats.traceparents)
        assert sent == [f"00-{trace_id}-{hex_ids(attempts[0])[1]}-01"]
    # In parallel: each call started before the other ended.
    u, o = calls["users"], calls["orders"]
    assert u.start_time is not None
    assert o.start_time is not None
    assert u.end_time is not None
    assert o.end_time is not None
    assert u.start_time < o.end_time
    assert o.start_time < u.end_time
    # Both inside the request's span.
    assert server.start_time is not None
    assert server.end_time is not None
    assert server.start_time <= min(u.start_time, o.start_time)
    assert max(u.end_time, o.end_time) <= server.end_time


@pytest.mark.asyncio
async def test_a_404_marks_the_cancelled_orders_call(spans: InMemorySpanExporter) -> None:
    async with (
        running_stubs(latency_ms=2000) as (users, orders),
        traced_app(users, orders) as client,
    ):
        # The 404 comes after the orders call is surely on the wire, even on a busy machine.
        users.knobs.latency_ms = 300
        resp = await client.get("/v1/users/u5000/summary")
        assert resp.status == 404
    done = spans.get_finished_spans()
    server = one(done, "GET /v1/users/{user_id}/summary")
    assert server.parent is None  # no traceparent: the request started the trace
    users_call, orders_call = one(done, "GET users"), one(done, "GET orders")
    assert users_call.attributes is not None
    assert orders_call.attributes is not None
    assert users_call.attributes["downstream.outcome"] == "not_found"
    assert orders_call.attributes["downstream.outcome"] == "cancelled"
    assert [e.name for e in orders_call.events] == ["cancelled"]
    assert orders_call.status.status_code is StatusCode.UNSET  # not the downstream's failure
    assert hex_ids(orders_call)[2] == hex_ids(server)[1]
    # The orders stub saw the trace the request started.
    assert [tp.split("-")[1] for tp in orders.stats.traceparents] == [hex_ids(server)[0]]


@pytest.mark.asyncio
async def test_retries_are_children_of_the_call_and_refusals_are_events(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracing = Tracing(TraceConfig.from_env({}), Metrics(), name="t", version="0")
    tracing.start()
    async with running_stubs() as (users, _):
        client = await started_client(
            "users", users.url, retry_budget_ratio=1.0, breaker_failures=2
        )
        client.tracing = tracing
        try:
            with pytest.raises(DownstreamError):
                await client.get_json("/users/u1?fail=503", Deadline.after(2))
            with pytest.raises(DownstreamError):  # the breaker is open now
                await client.get_json("/users/u1", Deadline.after(2))
        finally:
            await client.close()
    await tracing.close(2)
    done = spans.get_finished_spans()
    failed, refused = by_name(done, "GET users")
    assert failed.attributes is not None
    assert failed.attributes["downstream.outcome"] == "error"
    assert failed.status.status_code is StatusCode.ERROR
    attempts = [s for s in by_name(done, "GET") if hex_ids(s)[2] == hex_ids(failed)[1]]
    assert len(attempts) == 2
    assert [a.attributes.get("http.request.resend_count") for a in attempts] == [None, 1]  # type: ignore[union-attr]
    assert all(a.attributes["http.response.status_code"] == 503 for a in attempts)  # type: ignore[index]
    assert refused.attributes is not None
    assert refused.attributes["downstream.outcome"] == "rejected"
    assert [e.name for e in refused.events] == ["circuit breaker open"]
    assert not [s for s in by_name(done, "GET") if hex_ids(s)[2] == hex_ids(refused)[1]]


@pytest.mark.asyncio
async def test_request_logs_and_access_line_carry_the_trace_and_exemplars_are_kept(
    spans: InMemorySpanExporter, log_output: io.BytesIO
) -> None:
    async with traced_app() as client:
        resp = await client.get("/t/log", headers={"traceparent": CALLER})
        assert resp.status == 200
        admin = create_admin_app(client.app)
        async with TestClient(TestServer(admin)) as scraper:
            open_metrics = await scraper.get(
                "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
            )
            text = await open_metrics.text()
            plain = await (await scraper.get("/metrics")).text()
        assert client.app[TRACING] is not None
    server = one(spans.get_finished_spans(), "GET /t/log")
    trace_id, span_id, _ = hex_ids(server)
    lines = [json.loads(x) for x in log_output.getvalue().splitlines()]
    inside = [x for x in lines if x["event"] == "inside the request"]
    access = [x for x in lines if x["event"] == "access" and x["path"] == "/t/log"]
    assert [(x["trace_id"], x["span_id"]) for x in inside] == [(trace_id, span_id)]
    assert [(x["trace_id"], x["span_id"]) for x in access] == [(trace_id, span_id)]
    assert open_metrics.content_type == "application/openmetrics-text"
    exemplars = [x for x in text.splitlines() if "duration_seconds_bucket" in x and " # {" in x]
    assert any(f'trace_id="{trace_id}"' in x and 'route="/t/log"' in x for x in exemplars)
    assert "service_tracing_export_failures_total" in text
    assert "trace_id" not in plain  # the classic text format has no exemplars


@pytest.mark.asyncio
async def test_an_unsampled_caller_is_not_recorded_but_its_trace_goes_on(
    spans: InMemorySpanExporter,
) -> None:
    unsampled = CALLER[:-2] + "00"
    async with running_stubs() as (users, orders), traced_app(users, orders) as client:
        resp = await client.get("/v1/users/u42/summary", headers={"traceparent": unsampled})
        assert resp.status == 200
    assert spans.get_finished_spans() == ()
    for stub in (users, orders):
        (sent,) = stub.stats.traceparents
        _, trace_id, parent_id, flags = sent.split("-")
        assert (trace_id, flags) == (CALLER_TRACE, "00")
        assert parent_id != CALLER_SPAN


class Upper(Stage):
    name = "upper"

    async def process(self, values: list[Any]) -> list[Any]:
        return values


@pytest.mark.asyncio
async def test_a_tcp_event_is_found_by_its_client_and_its_write_links_back(
    spans: InMemorySpanExporter,
) -> None:
    settings = make_settings()
    metrics = Metrics()
    tracing = Tracing(TraceConfig.from_env({}), metrics, name="t", version="0")
    tracing.start()
    sink = MemorySink()
    async with Pipeline(settings.pipeline, metrics, [Upper()], sink, tracing=tracing) as pipe:
        server = TcpServer(settings.tcp, metrics, EventLines(pipe, 1.0), tracing=tracing)
        port = (await server.start())[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b'PING\n{"user_id": "u1", "type": "click"}\n{"user_id": "u2", "type": "x"}\n')
        answers = [await reader.readline() for _ in range(3)]
        client_port = writer.get_extra_info("sockname")[1]
        writer.close()
        assert answers[0] == b"PONG\n"
        assert all(a.startswith(b"OK ") for a in answers[1:])
        assert await wait_for(lambda: len(sink.lines) == 2)
        await pipe.drain(5)
        await server.close()
    await tracing.close(2)
    done = spans.get_finished_spans()
    (read,) = [
        s
        for s in by_name(done, "tcp lines")
        if (s.attributes or {}).get("client.port") == client_port
    ]
    assert read.attributes is not None
    assert (read.attributes["tcp.lines"], read.attributes["tcp.errors"]) == (2, 0)
    assert read.attributes["client.address"] == "127.0.0.1"
    for name in ("pipeline upper", "pipeline sink write"):
        batch = one(done, name)
        assert read.context in [link.context for link in batch.links], name
        assert hex_ids(batch)[0] != hex_ids(read)[0]  # a trace of its own, linked


@pytest.mark.asyncio
async def test_http_events_are_linked_from_the_pipelines_batches(
    spans: InMemorySpanExporter,
) -> None:
    async with traced_app() as client:
        resp = await client.post(
            "/v1/events",
            json=[{"user_id": "u1", "type": "click"}] * 3,
            headers={"traceparent": CALLER},
        )
        assert resp.status == 202
        await asyncio.sleep(0.3)  # the batch window
    done = spans.get_finished_spans()
    server = one(done, "POST /v1/events")
    write = one(done, "pipeline sink write")
    assert [link.context for link in write.links] == [server.context]
    enrich = by_name(done, "pipeline enrich")
    assert enrich
    assert all(server.context in [x.context for x in e.links] for e in enrich)


def test_tracing_off_adds_nothing_and_imports_no_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from service.app import create_app\n"
        "from tests.support.settings import make_settings\n"
        "app = create_app(make_settings())\n"
        "from service.runtime.keys import HTTP_MIDDLEWARE, METRICS\n"
        "mw = app[HTTP_MIDDLEWARE]\n"
        "assert mw.tracing is None and 'enter_request' not in mw.middleware.__code__.co_names\n"
        "assert not any(f.name.startswith('service_tracing') for f in app[METRICS]._families)\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"


def _current_trace() -> tuple[str, str] | None:
    """A job: the span context it runs in (module level, so a worker process can import it)."""
    from opentelemetry.trace import get_current_span

    ctx = get_current_span().get_span_context()
    return (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}") if ctx.is_valid else None


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["thread", "process"])
async def test_executor_jobs_carry_the_span_context(spans: InMemorySpanExporter, kind: str) -> None:
    tracing = Tracing(TraceConfig.from_env({}), Metrics(), name="t", version="0")
    tracing.start()
    offload = Offload(OffloadSettings(cpu_kind=kind, cpu_workers=1), Metrics(), tracing=tracing)
    try:
        root = tracing.start_root("work", SpanKind.INTERNAL, {})
        token = tracing.activate(root)
        try:
            seen_io = await offload.run_io(_current_trace)
            seen_cpu = await offload.run_cpu(_current_trace)
        finally:
            tracing.deactivate(token)
            root.end()
    finally:
        await offload.close(5)
    await tracing.close(2)
    done = spans.get_finished_spans()
    work = one(done, "work")
    for name, seen in (("offload io", seen_io), ("offload cpu", seen_cpu)):
        job = one(done, name)
        assert hex_ids(job)[2] == hex_ids(work)[1]
        assert seen == hex_ids(job)[:2], name  # the job ran inside its span
