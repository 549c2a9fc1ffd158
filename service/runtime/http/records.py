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
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any

from aiohttp.web_urldispatcher import AbstractRoute

from service.runtime.http.compat import Described
from service.runtime.ids import IdSequence
from service.runtime.log import sink
from service.runtime.log.access import AccessEntry, AccessLog, access_prefix, render_access
from service.runtime.metrics import CounterChild, HistogramChild, Metrics

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


class _RouteStatus:
    """The metric children and the access-line prefix of one (method, route, status)."""

    __slots__ = ("counter", "duration", "log_prefix", "method", "route")

    def __init__(self, metrics: Metrics, method: str, route: str, status: int) -> None:
        self.method = method
        self.route = route
        self.counter: CounterChild = metrics.http_requests.labels(method, route, str(status))
        self.duration: HistogramChild = metrics.http_duration.labels(method, route)
        self.log_prefix = access_prefix(method, route, status)


class RequestRecords:
    """The records of answered requests, and the request ids made ahead for new ones."""

    def __init__(self, metrics: Metrics, access_log: AccessLog) -> None:
        self._metrics = metrics
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
        self.ids.top_up()


def _host(peer: Any) -> str | None:
    return str(peer[0]) if isinstance(peer, tuple) else peer
