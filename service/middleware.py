"""The one middleware of the public API: request id, metrics, access log, errors.

Everything a request pays for on top of its handler happens here, once:
the request id is read or made, bound for logging and returned; errors
become RFC 9457 problem documents; and a small record of the request is
kept, which :meth:`ApiMiddleware.settle` later counts into the metric
children and writes as an access line, many records at a time. Doing all of
it in one middleware (rather than four) matters: each middleware layer
costs about 2.4 us here, about a tenth of a cheap request (see
../shared/PERF-NOTES.md).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from aiohttp.web_urldispatcher import AbstractRoute
from multidict import istr

from service.errors import ProblemError
from service.log import (
    AccessEntry,
    AccessLog,
    access_prefix,
    get_logger,
    render_access,
    request_id_var,
    sink,
)
from service.metrics import CounterChild, HistogramChild, Metrics
from service.state import ServiceState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-ID"
# Case-insensitive keys made once: a plain str key is folded on every lookup.
_RID_KEY = istr(REQUEST_ID_HEADER)
_UA_KEY = hdrs.USER_AGENT
REQUEST_ID_MAX = 128
# Letters, digits and a few separators: safe in logs, headers and URLs.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}").fullmatch
_KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"))
# Cache entries for (method, route): routes are few, but methods are the
# client's choice.
_MAX_ROUTE_KEYS = 1024
# Client closed the connection before the answer (nginx's convention).
STATUS_CLIENT_CLOSED = 499

log = get_logger("service.http")


def sane_request_id(value: str | None) -> bool:
    return value is not None and _SANE_REQUEST_ID(value) is not None


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An ``application/problem+json`` response (RFC 9457)."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    doc: dict[str, Any] = {
        "type": f"urn:problem:{slug}" if slug else "about:blank",
        "title": title or phrase,
        "status": status,
        "detail": detail,
    }
    rid = request_id_var.get()
    if rid is not None:
        doc["request_id"] = rid
    if extra:
        doc.update(extra)
    return web.Response(
        body=orjson.dumps(doc), status=status, headers=headers,
        content_type="application/problem+json",
    )


def problem_from_error(exc: ProblemError) -> web.Response:
    return problem_response(
        exc.status, exc.detail, slug=exc.slug, title=exc.title, extra=exc.extra,
        headers=exc.headers,
    )


def problem_from_http_exception(exc: web.HTTPException) -> web.StreamResponse:
    if exc.status < 400:
        return exc  # redirects and the like pass through unchanged
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
    detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    return problem_response(exc.status, detail, headers=headers)


def unexpected_error(request: web.Request, exc: BaseException) -> web.Response:
    log.error("unhandled error", method=request.method, path=request.path, exc_info=exc)
    return problem_response(500, "The server failed to answer; the error is logged.",
                            slug="internal")


class _RouteStatus:
    """The metric children and the access-line prefix of one (method, route, status)."""

    __slots__ = ("counter", "duration", "log_prefix", "method", "route")

    def __init__(self, metrics: Metrics, method: str, route: str, status: int) -> None:
        self.method = method
        self.route = route
        self.counter: CounterChild = metrics.http_requests.labels(method, route, str(status))
        self.duration: HistogramChild = metrics.http_duration.labels(method, route)
        self.log_prefix = access_prefix(method, route, status)


# What the middleware keeps of an answered request until the next settle: (start,
# end, method, raw path, user agent, route, status, request id, peer). Small
# values only: holding each request's parsed message (its headers, URL...) until
# the settle measured about 3% slower in the ISSUE 2 benchmark.
_Record = tuple[float, float, str, str, "str | None", "AbstractRoute | None", int, str, Any]
# Request ids are made in batches of this many, at settle time.
_ID_BATCH = 1024


class ApiMiddleware:
    """The public API's middleware: request id, metrics, access log, errors.

    A request does the part that cannot wait: read or make the request id,
    bind it for logging, map errors to problem+json, set the response header,
    and keep a record tuple. :meth:`settle` folds the records into the metric
    children and the access log in one tight loop, at the log sink's flush
    (every ``log.flush_interval``), before every metrics scrape, and at once
    when the sink is unbuffered or ``LogSink.max_pending`` records wait. Per
    request that is about half the CPU of counting and logging inline: the
    batch runs hot in the CPU caches, a request's own path is cold
    (ISSUE 2's HTTP benchmark).

    ``middleware`` is the aiohttp middleware (for apps run as they are, e.g.
    by tests' ``TestServer``); ``bind(handler)`` makes the same function with
    ``handler`` as its default, which ``service.httpserver.AppRunner`` calls
    with the request alone: no ``functools.partial`` with a keyword per request.

    The request path reads a few aiohttp attributes behind their public
    properties (``_headers``, ``_match_info``, ``_route``, ``_message``,
    ``_transport_peername``, ``_status``): each property is a Python-level
    call of about 0.5 us. ``tests/test_middleware.py::
    test_private_request_fields_match_the_public_api`` pins them to the public
    API, so an aiohttp upgrade that changes them fails there. This middleware
    is the outermost layer, so the request it sees is never a clone.
    """

    def __init__(self, metrics: Metrics, state: ServiceState, access_log: AccessLog) -> None:
        self._metrics = metrics
        self._state = state
        self._access_log = access_log
        self._stats: dict[tuple[str, AbstractRoute | None, int], _RouteStatus] = {}
        self._records: list[_Record] = []
        # The thread whose loop serves the app (``claim`` at start-up): only it
        # settles, so a scrape from another thread cannot race the request path.
        self._owner = threading.get_ident()
        # Request ids: a random per-process prefix and a counter, made ahead in
        # batches (a list's pop per request; the last made comes out first).
        self._id_prefix = os.urandom(6).hex() + "-"
        self._next_id = 1
        self._ids: list[str] = []
        self._make_ids()
        self.middleware: Middleware = web.middleware(self._build(None))
        metrics.before_collect.append(self.settle)
        sink().add_flush_hook(self.settle)

    def bind(self, handler: Handler) -> Handler:
        return self._build(handler)

    async def claim(self, app: web.Application) -> None:
        """``on_startup``: the serving loop's thread owns the records from now on."""
        self._owner = threading.get_ident()

    def _route_status(self, method: str, route: AbstractRoute | None, status: int
                      ) -> _RouteStatus:
        # The route label is the template ("/v1/users/{user_id}/summary"), never
        # the raw path. 404s and 405s get a new system route each, so they share
        # one key; clients choose methods, so unknown ones share the "other" label.
        # (No route at all: the request ended before routing.)
        resource = route.resource if route is not None else None
        key = (method, route if resource is not None else None, status)
        entry = self._stats.get(key)
        if entry is None:
            entry = _RouteStatus(self._metrics, method if method in _KNOWN_METHODS else "other",
                                 resource.canonical if resource is not None else "unmatched",
                                 status)
            if len(self._stats) < _MAX_ROUTE_KEYS:
                self._stats[key] = entry
        return entry

    def _make_ids(self) -> None:
        """Top the request ids up to a full batch (the newest first: ids pop from the end)."""
        first, prefix = self._next_id, self._id_prefix
        self._next_id = first + _ID_BATCH - len(self._ids)
        self._ids[:0] = [prefix + hex(n)[2:] for n in range(self._next_id - 1, first - 1, -1)]

    def _new_id(self) -> str:
        self._make_ids()
        return self._ids.pop()

    def settle(self) -> None:
        """Count the requests answered since the last call, and write their access lines."""
        records = self._records
        if not records or threading.get_ident() != self._owner:
            return
        batch = records[:]
        records.clear()  # the same list: the request path holds its bound append
        stats = self._stats
        route_status = self._route_status
        access = self._access_log
        log_all = access.enabled and access.sample >= 1.0
        log_some = access.enabled and not log_all
        lines: list[AccessEntry] = []
        line = lines.append
        for start, end, method, path, agent, route, status, rid, peer in batch:
            duration = end - start
            # One dictionary lookup per request: the route object (the same for
            # every request it matches), the method and the status.
            entry = stats.get((method, route, status)) or route_status(method, route, status)
            entry.counter.value += 1
            # HistogramChild.observe, inline: a call per request costs as much again.
            hist = entry.duration
            hist.counts[bisect_left(hist.bounds, duration)] += 1
            hist.sum += duration
            if log_all or (log_some and access.sampled(status, duration)):
                if access.console:  # sampled above: write, not log (which samples again)
                    access.write(entry.method, entry.route, path, status, duration, rid,
                                 peer[0] if isinstance(peer, tuple) else peer, agent)
                else:
                    line((end, rid, entry.log_prefix, path, duration, peer, agent))
        if lines:
            sink().write_line(render_access(lines))
        if len(self._ids) < _ID_BATCH // 2:
            self._make_ids()

    def _build(self, default: Handler | None) -> Callable[..., Awaitable[web.StreamResponse]]:
        # Everything the request path touches is a local of this closure.
        state = self._state
        pop_id = self._ids.pop
        new_id = self._new_id
        set_request_id = request_id_var.set
        in_flight = self._metrics.http_in_flight.labels()
        perf_counter = time.perf_counter
        records = self._records
        record = records.append
        log_sink = sink()
        settle = self.settle

        async def middleware(
            request: web.Request, handler: Handler | None = default
        ) -> web.StreamResponse:
            start = perf_counter()
            headers = request._headers
            rid = headers.get(_RID_KEY)
            if rid is None or _SANE_REQUEST_ID(rid) is None:
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
                    # Tell keep-alive clients to reconnect elsewhere (SPEC shutdown step 2).
                    response.force_close()
                status = response._status
                return response
            finally:
                if status is not None:
                    message, match_info = request._message, request._match_info
                    record((start, perf_counter(), message.method, message.path,
                            headers.get(_UA_KEY),
                            match_info._route if match_info is not None else None, status, rid,
                            request._transport_peername))
                    if len(records) > log_sink.max_pending:
                        settle()

        return middleware


@web.middleware
async def admin_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The admin app's error mapping (no metrics: scrapes are not API traffic)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return problem_from_http_exception(exc)
    except Exception as exc:
        return unexpected_error(request, exc)
