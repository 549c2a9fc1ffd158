"""What each answered request leaves behind, counted and logged many requests at a time.

The middleware keeps one small tuple per answered request
(:data:`Record`). :meth:`RequestRecords.settle` folds them into the metric
children (``http_requests_total``, ``http_request_duration_seconds``) and the
access log in one tight loop: at each flush of the log writer (every
``log.flush_interval``), before every metrics scrape, and at once when the
writer is unbuffered or ``LogSink.max_pending`` records wait. Per request
that is about half the CPU of counting and logging inline: the batch runs
hot in the CPU caches, a request's own path stays short.

Only the thread whose loop serves the app settles (:meth:`claim` at
start-up), so a scrape or a flush from another thread cannot race the
request path.

With tracing on, a record also carries the request's span (None when not
sampled), and the same batch finishes the sampled spans for the export
queue, puts their trace and span ids in the access lines and keeps a
trace-id exemplar per histogram bucket: a sampled request costs the loop
about a microsecond more here, and its span's export runs in the exporter's
thread (``service.runtime.tracing``).
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, cast

from aiohttp.web_urldispatcher import AbstractRoute

from service.runtime.http.compat import Described
from service.runtime.ids import IdSequence
from service.runtime.log import sink
from service.runtime.log.access import (
    AccessEntry,
    AccessLog,
    access_prefix,
    render_access,
    trace_fields,
)
from service.runtime.metrics import CounterChild, HistogramChild, Metrics

if TYPE_CHECKING:
    from service.runtime.tracing.core import Tracing
    from service.runtime.tracing.spans import LightSpan

_KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
)
# Cache entries for (method, route, status): routes are few, but methods are
# the client's choice.
_MAX_ROUTE_KEYS = 1024

# What the middleware keeps of an answered request until the next settle:
# (start, end, (method, raw path, route, peer), user agent, status, request id).
# Small values only: holding each request's parsed message (its headers, URL...)
# until the settle measured about 3% slower.
Record = tuple[float, float, Described, "str | None", int, str]
# With tracing on: the same, then the request's span when it is sampled.
TracedRecord = tuple[float, float, Described, "str | None", int, str, "LightSpan | None"]


class _RouteStatus:
    """The metric children and the access-line prefix of one (method, route, status)."""

    __slots__ = ("counter", "duration", "log_prefix", "method", "route", "span_name")

    def __init__(self, metrics: Metrics, method: str, route: str, status: int) -> None:
        self.method = method
        self.route = route
        self.counter: CounterChild = metrics.http_requests.labels(method, route, str(status))
        self.duration: HistogramChild = metrics.http_duration.labels(method, route)
        self.log_prefix = access_prefix(method, route, status)
        # The server span's name (OpenTelemetry's HTTP conventions: method and route).
        self.span_name = f"{method} {route}" if route != "unmatched" else method


class RequestRecords:
    """The records of answered requests, and the request ids made ahead for new ones."""

    def __init__(
        self, metrics: Metrics, access_log: AccessLog, tracing: Tracing | None = None
    ) -> None:
        self._metrics = metrics
        self._tracing = tracing
        self._fold = self._count if tracing is None else self._count_traced
        self._access_log = access_log
        self._stats: dict[tuple[str, AbstractRoute | None, int], _RouteStatus] = {}
        self.records: list[Record] = []
        self.ids = IdSequence()
        self._owner = threading.get_ident()
        metrics.before_collect.append(self.settle)
        sink().add_flush_hook(self.settle)

    def claim(self) -> None:
        """The calling thread (the serving loop's) settles from now on."""
        self._owner = threading.get_ident()

    def _route_status(self, method: str, route: AbstractRoute | None, status: int) -> _RouteStatus:
        # The route label is the template ("/v1/users/{user_id}/summary"), never
        # the raw path. 404s and 405s get a new system route each, so they share
        # one key; clients choose methods, so unknown ones share the "other" label.
        # (No route at all: the request ended before routing.)
        resource = route.resource if route is not None else None
        key = (method, route if resource is not None else None, status)
        entry = self._stats.get(key)
        if entry is None:
            entry = _RouteStatus(
                self._metrics,
                method if method in _KNOWN_METHODS else "other",
                resource.canonical if resource is not None else "unmatched",
                status,
            )
            if len(self._stats) < _MAX_ROUTE_KEYS:
                self._stats[key] = entry
        return entry

    def settle(self) -> None:
        """Count the requests answered since the last call, and write their access lines."""
        records = self.records
        if not records or threading.get_ident() != self._owner:
            return
        batch = records[:]
        records.clear()  # the same list: the request path holds its bound append
        self._fold(batch)
        self.ids.top_up()

    def _count(self, batch: list[Record]) -> None:
        stats = self._stats
        route_status = self._route_status
        access = self._access_log
        log_all = access.enabled and access.sample >= 1.0
        log_some = access.enabled and not log_all
        lines: list[AccessEntry] = []
        line = lines.append
        for start, end, (method, path, route, peer), agent, status, rid in batch:
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
                    access.write(
                        entry.method, entry.route, path, status, duration, rid, _host(peer), agent
                    )
                else:
                    line((end, rid, entry.log_prefix, path, duration, peer, agent))
        if lines:
            sink().write_line(render_access(lines))

    def _count_traced(self, batch: list[Record]) -> None:
        """:meth:`_count`, and the sampled requests' spans (see the module docstring)."""
        tracing = self._tracing
        assert tracing is not None
        resource, scope = tracing.resource, tracing.scope
        # Records hold perf_counter() readings: these turn them into Unix time.
        offset_ns = time.time_ns() - int(time.perf_counter() * 1e9)
        wall_offset = offset_ns / 1e9
        stats = self._stats
        route_status = self._route_status
        access = self._access_log
        log_all = access.enabled and access.sample >= 1.0
        log_some = access.enabled and not log_all
        lines: list[AccessEntry] = []
        line = lines.append
        spans = []
        for start, end, (method, path, route, peer), agent, status, rid, span in cast(
            list[TracedRecord], batch
        ):
            duration = end - start
            entry = stats.get((method, route, status)) or route_status(method, route, status)
            entry.counter.value += 1
            hist = entry.duration
            bucket = bisect_left(hist.bounds, duration)
            hist.counts[bucket] += 1
            hist.sum += duration
            prefix = entry.log_prefix
            trace_ids = None
            if span is not None:
                span.name = span.name or entry.span_name  # a handler may have named it
                span.start_ns = int(start * 1e9) + offset_ns
                span.end_ns = int(end * 1e9) + offset_ns
                if status >= 500:  # a server span's error (OpenTelemetry's HTTP conventions)
                    span.fail(f"HTTP {status}")
                spans.append(
                    span.readable(
                        resource,
                        scope,
                        {
                            "http.request.method": entry.method,
                            "http.route": entry.route,
                            "http.response.status_code": status,
                            "url.path": path,
                            "request_id": rid,
                        },
                    )
                )
                ctx = span.get_span_context()
                trace_ids = (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
                hist.exemplar(bucket, trace_ids[0], duration, end + wall_offset)
                prefix += trace_fields(trace_ids)
            if log_all or (log_some and access.sampled(status, duration)):
                if access.console:
                    access.write(
                        entry.method,
                        entry.route,
                        path,
                        status,
                        duration,
                        rid,
                        _host(peer),
                        agent,
                        trace_ids=trace_ids,
                    )
                else:
                    line((end, rid, prefix, path, duration, peer, agent))
        if lines:
            sink().write_line(render_access(lines))
        if spans:
            tracing.submit(spans)


def _host(peer: Any) -> str | None:
    return str(peer[0]) if isinstance(peer, tuple) else peer
