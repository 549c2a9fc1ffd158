"""Every read of an aiohttp private attribute, in one place, with a public-API fallback.

Three things here lean on aiohttp's internals, each for a reason:

* **The request path's fast reads.** The HTTP middleware reads a few fields
  of every request and response. The public properties (``request.headers``,
  ``request.match_info``, ``response.status``, ...) are Python-level calls of
  about half a microsecond each; the private fields behind them
  (``_headers``, ``_message``, ``_match_info``, ``_route``,
  ``_status``) are plain attribute reads. On a cheap request that is a few
  percent of its whole cost.
* **The client's silent resend.** aiohttp's client resends an idempotent
  request once when its pooled connection fails (RFC 9112 9.3.1); the
  downstream client's retry policy and budget must see every retry, and
  aiohttp has no public switch for it yet (aio-libs/aiohttp#10790), only the
  session's ``_retry_connection``.
* **The connection's task.** aiohttp ends a connection's task by cancelling
  it, also when the client simply closes it between requests; the task
  metrics count such an end as finished (``service.runtime.http.server``),
  which needs the task: ``RequestHandler._task_handler``. Without it the end
  counts as cancelled, nothing else changes.

:func:`detect` checks at start-up, on real aiohttp objects, that every field
exists and agrees with its public property. When one does not (a future
aiohttp renamed it), the service uses the public API instead, by itself,
and logs one warning line; nothing fails. ``http.fast_path = false`` forces
the public API (the tests and ``make bench`` run both).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_urldispatcher import AbstractRoute
from multidict import CIMultiDictProxy

from service.runtime.log import get_logger

log = get_logger("service.http")

# What the access record keeps of a request: method, raw path, route (None
# when the request ended before routing) and the peer address.
Described = tuple[str, str, "AbstractRoute | None", Any]


@dataclass(frozen=True)
class RequestAccess:
    """How the middleware reads a request and a response: the fast or the public way."""

    fast: bool
    headers: Callable[[web.Request], CIMultiDictProxy[str]]
    status: Callable[[web.StreamResponse], int]
    describe: Callable[[web.Request], Described]


def _describe_fast(request: web.Request) -> Described:
    message, match_info = request._message, request._match_info
    route = match_info._route if match_info is not None else None
    return message.method, message.path, route, request._transport_peername


def _describe_public(request: web.Request) -> Described:
    try:
        route: AbstractRoute | None = request.match_info.route
    except (AssertionError, AttributeError):  # no match info: the request ended before routing
        route = None
    return request.method, request.raw_path, route, request.protocol.peername


FAST = RequestAccess(True, attrgetter("_headers"), attrgetter("_status"), _describe_fast)
PUBLIC = RequestAccess(False, attrgetter("headers"), attrgetter("status"), _describe_public)


def _fast_reads_work() -> str | None:
    """None when every private field exists and equals its public property; else what failed."""
    try:
        request = make_mocked_request("GET", "/probe?x=1", headers={"X-Probe": "1"})
        assert isinstance(request, web.Request)
        response = web.Response(status=418)
        checks = {
            "_headers": FAST.headers(request) is request.headers,
            "_message": _describe_fast(request)[:2] == (request.method, request.raw_path),
            "_status": FAST.status(response) == response.status,
            "_match_info": getattr(request, "_match_info", None) is request.match_info,
            "_route": request.match_info._route is request.match_info.route,
            "_transport_peername": hasattr(request, "_transport_peername"),
        }
    except Exception as exc:  # any change in the internals, reported rather than raised
        return f"{type(exc).__name__}: {exc}"
    failed = [name for name, ok in checks.items() if not ok]
    return ", ".join(failed) or None


def detect(wanted: bool = True) -> RequestAccess:
    """The request access to use with this aiohttp: FAST when it works and is wanted."""
    if not wanted:
        return PUBLIC
    problem = _fast_reads_work()
    if problem is None:
        return FAST
    log.warning(
        "aiohttp's private request fields are not as expected: using the public API",
        aiohttp=aiohttp.__version__,
        problem=problem,
    )
    return PUBLIC


_warned_resend = False


def disable_connection_resend(session: aiohttp.ClientSession) -> bool:
    """Stop ``session`` resending a request on a failed pooled connection; False if it cannot."""
    global _warned_resend
    if not hasattr(session, "_retry_connection"):
        if not _warned_resend:
            _warned_resend = True
            log.warning(
                "aiohttp's ClientSession has no _retry_connection: an idempotent "
                "request may be resent once on a broken pooled connection, outside "
                "the retry budget",
                aiohttp=aiohttp.__version__,
            )
        return False
    session._retry_connection = False
    return True


def connection_task(handler: object) -> asyncio.Task[None] | None:
    """The task serving an aiohttp connection (``RequestHandler._task_handler``), if known."""
    task = getattr(handler, "_task_handler", None)
    return task if isinstance(task, asyncio.Task) else None
