"""Tracing end to end: a real service process exporting OTLP/HTTP to a receiver in this test.

The receiver is a small HTTP server that decodes each export with
``opentelemetry-proto``, as a collector would. The service runs with
``SERVICE_TRACING__ENABLED=true`` and ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at
it, in front of two stub processes that record the ``traceparent`` they get.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.support.process import ServiceProcess, http_get, scrape
from tests.support.stubs import service_process, stub_process

CALLER_TRACE, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@dataclass
class Exported:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    attributes: dict[str, Any]
    service: str


class Receiver:
    """An OTLP/HTTP trace receiver on a free loopback port."""

    def __init__(self) -> None:
        self.spans: list[Exported] = []
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.take(self.path, self.headers.get("Content-Type"), body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def take(self, path: str, content_type: str | None, body: bytes) -> None:
        assert path == "/v1/traces"
        assert content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        self.requests += 1
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {
                        a.key: getattr(a.value, a.value.WhichOneof("value") or "string_value")
                        for a in span.attributes
                    }
                    self.spans.append(
                        Exported(
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.name,
                            attributes,
                            resource["service.name"],
                        )
                    )

    def wait(self, what: Any, timeout: float = 10.0) -> list[Exported]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in list(self.spans) if what(s)]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no such span among {[s.name for s in self.spans]}")


@contextlib.contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


@contextlib.contextmanager
def traced_stack(endpoint: str, **env: str) -> Iterator[tuple[ServiceProcess, ...]]:
    with (
        stub_process("users") as users,
        stub_process("orders") as orders,
        service_process(
            {
                "SERVICE_DOWNSTREAM__USERS_URL": users.url(),
                "SERVICE_DOWNSTREAM__ORDERS_URL": orders.url(),
                "SERVICE_TRACING__ENABLED": "true",
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_SERVICE_NAME": "traced-test",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                **env,
            }
        ) as service,
    ):
        yield service, users, orders


def traceparents(stub: ServiceProcess) -> list[str]:
    _, _, body = http_get(stub.url("/stats"))
    return list(json.loads(body)["traceparents"])


def access_line(service: ServiceProcess, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in service.events("access"):
            if line.get("request_id") == request_id:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no access line for {request_id}")


def test_a_callers_trace_reaches_the_downstream_call_and_the_exported_spans() -> None:
    with receiving() as receiver, traced_stack(f"http://127.0.0.1:{receiver.port}") as stack:
        service, users, orders = stack
        status, _, _ = http_get(
            service.url("/v1/users/u42/summary"),
            headers={
                "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
                "X-Request-ID": "traced-1",
            },
        )
        assert status == 200
        (server,) = receiver.wait(lambda s: s.attributes.get("request_id") == "traced-1")
        assert (server.trace_id, server.parent_id) == (CALLER_TRACE, CALLER_SPAN)
        assert server.name == "GET /v1/users/{user_id}/summary"
        assert server.service == "traced-test"
        for stub, name in ((users, "users"), (orders, "orders")):
            (sent,) = traceparents(stub)
            _, trace_id, parent_id, flags = sent.split("-")
            assert (trace_id, flags) == (CALLER_TRACE, "01")
            # The downstream's parent is the attempt span, a child of the call's span,
            # a child of the request's span: parent ids across the call.
            (attempt,) = receiver.wait(lambda s, p=parent_id: s.span_id == p)
            (call,) = receiver.wait(lambda s, a=attempt: s.span_id == a.parent_id)
            assert call.name == f"GET {name}"
            assert call.parent_id == server.span_id
            assert {attempt.trace_id, call.trace_id} == {CALLER_TRACE}
        line = access_line(service, "traced-1")
        assert (line["trace_id"], line["span_id"]) == (CALLER_TRACE, server.span_id)


def test_a_request_without_a_traceparent_starts_a_trace_that_is_propagated() -> None:
    with receiving() as receiver, traced_stack(f"http://127.0.0.1:{receiver.port}") as stack:
        service, users, orders = stack
        status, _, _ = http_get(
            service.url("/v1/users/u7/summary"), headers={"X-Request-ID": "fresh-1"}
        )
        assert status == 200
        (server,) = receiver.wait(lambda s: s.attributes.get("request_id") == "fresh-1")
        assert server.parent_id == ""  # a root
        assert {tp.split("-")[1] for tp in traceparents(users) + traceparents(orders)} == {
            server.trace_id
        }
        assert access_line(service, "fresh-1")["trace_id"] == server.trace_id
        # The pipeline's batches link to requests, in traces of their own.
        status, _, _ = http_get(service.url("/livez"))
        assert status == 200


def test_a_dead_collector_costs_requests_nothing_and_is_logged_once() -> None:
    # Nothing listens on the receiver's port once it is closed.
    with receiving() as receiver:
        endpoint = f"http://127.0.0.1:{receiver.port}"
    with traced_stack(endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="1") as (service, _, _):
        started = time.perf_counter()
        for i in range(20):
            status, _, _ = http_get(service.url("/v1/info"), headers={"X-Request-ID": f"d-{i}"})
            assert status == 200
        assert time.perf_counter() - started < 5
        deadline = time.monotonic() + 15
        failures = 0.0
        while time.monotonic() < deadline and failures < 2:
            time.sleep(0.2)
            assert http_get(service.url("/v1/info"))[0] == 200  # more spans, more exports
            failures = scrape(service.url("/metrics", "admin")).get(
                "service_tracing_export_failures_total", 0.0
            )
        assert failures >= 2
        assert len(service.events("span export failed")) == 1
        # The exporter's own complaints (one per failure and retry) are not lines of their own.
        assert not [
            x
            for x in service.lines
            if "export" in str(x.get("event", "")).lower() and x["event"] != "span export failed"
        ]
        assert access_line(service, "d-3")["trace_id"]
        code = service.stop()
    assert code == 0
