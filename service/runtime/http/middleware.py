"""The one middleware of a public API: request id, metrics, access log, errors.

Everything a request pays for on top of its handler happens here, once: the
request id is read or made, bound for logging and returned; errors become
RFC 9457 problem documents (:mod:`.problem`); and a small record of the
request is kept, which :class:`~.records.RequestRecords` later counts into
the metrics and writes as an access line, many records at a time. One
middleware rather than four matters: each aiohttp middleware layer costs
about 2.4 us, a tenth of a cheap request.

The middleware reads the request and the response through a
:class:`~.compat.RequestAccess`: aiohttp's private fields where they work, its
public API otherwise (``service.runtime.http.compat``). This middleware is the
outermost layer, so the request it sees is never a clone.

With tracing on (``service.runtime.tracing``) the middleware is built in its
traced form: the same function plus the request's span context made current
and the span kept in the record (finished in the batch, like the metrics).
With tracing off it is built exactly as if tracing did not exist.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from multidict import istr

from service.runtime.errors import ProblemError
from service.runtime.http.compat import RequestAccess
from service.runtime.http.problem import (
    STATUS_CLIENT_CLOSED,
    problem_from_error,
    problem_from_http_exception,
    unexpected_error,
)
from service.runtime.http.records import RequestRecords, TracedRecord
from service.runtime.log import sink
from service.runtime.metrics import GaugeChild
from service.runtime.requestid import REQUEST_ID_HEADER, request_id_var, sane
from service.runtime.state import ServiceState

if TYPE_CHECKING:
    from service.runtime.tracing.core import Tracing

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Case-insensitive keys made once: a plain str key is folded on every lookup.
_RID_KEY = istr(REQUEST_ID_HEADER)
_UA_KEY = hdrs.USER_AGENT


class ApiMiddleware:
    """The public API's middleware: request id, metrics, access log, errors.

    A request does the part that cannot wait: read or make the request id,
    bind it for logging, map errors to problem+json, set the response header,
    and keep a record tuple for :class:`~.records.RequestRecords`.

    ``middleware`` is the aiohttp middleware (for apps run as they are, e.g.
    by tests' ``TestServer``); ``bind(handler)`` makes the same function with
    ``handler`` as its default, which ``service.runtime.http.server`` calls
    with the request alone: no ``functools.partial`` with a keyword per request.
    Bound there, it also tells the connection which request it is handling,
    until it is answered (the header deadline must not run meanwhile, the
    body's may).
    """

    def __init__(
        self,
        records: RequestRecords,
        state: ServiceState,
        in_flight: GaugeChild,
        access: RequestAccess,
        *,
        tracing: Tracing | None = None,
    ) -> None:
        self.records = records
        self.access = access
        self.tracing = tracing
        self._state = state
        self._in_flight = in_flight
        self.middleware: Middleware = web.middleware(self._build(None))

    def bind(self, handler: Handler, *, track_connection: bool = False) -> Handler:
        return self._build(handler, track_connection)

    def _build(
        self, default: Handler | None, track_connection: bool = False
    ) -> Callable[..., Awaitable[web.StreamResponse]]:
        if self.tracing is not None:
            return self._build_traced(self.tracing, default, track_connection)
        # Everything the request path touches is a local of this closure.
        state = self._state
        ids = self.records.ids
        pop_id, new_id = ids.pop, ids.new
        set_request_id = request_id_var.set
        in_flight = self._in_flight
        perf_counter = time.perf_counter
        records = self.records.records
        record = records.append
        log_sink = sink()
        settle = self.records.settle
        headers_of, status_of, describe = (
            self.access.headers,
            self.access.status,
            self.access.describe,
        )

        async def middleware(
            request: web.Request, handler: Handler | None = default
        ) -> web.StreamResponse:
            start = perf_counter()
            if track_connection:  # the header deadline stops, the body's may start (http.server)
                protocol = request.protocol
                protocol.request = request  # type: ignore[attr-defined]
                protocol.header_since = 0  # type: ignore[attr-defined]
            headers = headers_of(request)
            rid = headers.get(_RID_KEY)
            if rid is None or sane(rid) is None:
                try:
                    rid = pop_id()
                except IndexError:  # more requests than a batch since the last settle
                    rid = new_id()
            # Each request runs in its own task with a copied context, so this
            # binding ends with the request.
            set_request_id(rid)
            status: int | None = None  # set once answered, or when the client went away
            in_flight.value += 1
            try:
                try:
                    response = await handler(request)  # type: ignore[misc]
                except ProblemError as exc:
                    response = problem_from_error(exc)
                except web.HTTPException as exc:
                    response = problem_from_http_exception(exc)
                except asyncio.CancelledError:
                    # The client went away; count it, then let the cancellation go on.
                    status = STATUS_CLIENT_CLOSED
                    raise
                except Exception as exc:
                    response = unexpected_error(request, exc)
                finally:
                    in_flight.value -= 1
                response.headers[_RID_KEY] = rid
                if state.draining:
                    # Tell keep-alive clients to reconnect elsewhere (shutdown step 2).
                    response.force_close()
                status = status_of(response)
                return response
            finally:
                if track_connection:
                    protocol.request = None  # type: ignore[attr-defined]
                if status is not None:
                    record(
                        (
                            start,
                            perf_counter(),
                            describe(request),
                            headers.get(_UA_KEY),
                            status,
                            rid,
                        )
                    )
                    if len(records) > log_sink.max_pending:
                        settle()

        return middleware

    def _build_traced(
        self, tracing: Tracing, default: Handler | None, track_connection: bool
    ) -> Callable[..., Awaitable[web.StreamResponse]]:
        """:meth:`_build`'s function, with the request's span: kept apart so the untraced one
        stays as it is. Each difference is marked ``# traced``."""
        state = self._state
        ids = self.records.ids
        pop_id, new_id = ids.pop, ids.new
        set_request_id = request_id_var.set
        in_flight = self._in_flight
        perf_counter = time.perf_counter
        records = self.records.records
        # traced: the record carries the span (http.records.TracedRecord)
        record = cast("Callable[[TracedRecord], None]", records.append)
        log_sink = sink()
        settle = self.records.settle
        headers_of, status_of, describe = (
            self.access.headers,
            self.access.status,
            self.access.describe,
        )
        enter_request = tracing.enter_request  # traced

        async def middleware(
            request: web.Request, handler: Handler | None = default
        ) -> web.StreamResponse:
            start = perf_counter()
            if track_connection:
                protocol = request.protocol
                protocol.request = request  # type: ignore[attr-defined]
                protocol.header_since = 0  # type: ignore[attr-defined]
            headers = headers_of(request)
            rid = headers.get(_RID_KEY)
            if rid is None or sane(rid) is None:
                try:
                    rid = pop_id()
                except IndexError:
                    rid = new_id()
            set_request_id(rid)
            span = enter_request(headers)  # traced: current for the request's task
            status: int | None = None
            in_flight.value += 1
            try:
                try:
                    response = await handler(request)  # type: ignore[misc]
                except ProblemError as exc:
                    response = problem_from_error(exc)
                except web.HTTPException as exc:
                    response = problem_from_http_exception(exc)
                except asyncio.CancelledError:
                    status = STATUS_CLIENT_CLOSED
                    raise
                except Exception as exc:
                    if span is not None:  # traced
                        span.record_exception(exc)
                    response = unexpected_error(request, exc)
                finally:
                    in_flight.value -= 1
                response.headers[_RID_KEY] = rid
                if state.draining:
                    response.force_close()
                status = status_of(response)
                return response
            finally:
                if track_connection:
                    protocol.request = None  # type: ignore[attr-defined]
                if status is not None:
                    record(
                        (
                            start,
                            perf_counter(),
                            describe(request),
                            headers.get(_UA_KEY),
                            status,
                            rid,
                            span,  # traced: finished when the record is settled
                        )
                    )
                    if len(records) > log_sink.max_pending:
                        settle()

        return middleware
