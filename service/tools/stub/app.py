"""The downstream stub: a real aiohttp server standing in for a downstream service.

``make run``, ``make stack``, compose and the tests start it as ``service
stub --name NAME``, one per configured downstream on a loopback URL. For
``users`` and ``orders`` it serves a deterministic dataset (users
``u1``..``u1000``; each user's orders derived from the number); for any other
name it answers every ``GET`` with ``{"name", "path"}``, a stand-in until you
write your own. It misbehaves on request, so the service's downstream client
can be tested against real sockets:

* latency: ``--latency-ms`` plus up to ``--latency-jitter-ms`` of random extra;
* errors: ``--error-rate`` answers that fraction with 503;
* resets: ``--reset-rate`` aborts that fraction of connections with a TCP RST;
* per request, query knobs override them: ``?latency_ms=``, ``?fail=503|500|reset|
  malformed|big``; ``POST /control`` changes the process-wide knobs at run time.

It honours ``X-Request-Deadline-Ms`` (the caller's remaining budget): it never
works past it and answers 504 instead, 10 ms early. ``GET /stats`` reports what it saw,
including the requests the caller cancelled (the connection closed while the
handler ran) and the number in flight, so tests can prove that cancellation
reaches the downstream.

It is a separate program that happens to share the CLI: it takes only the
runtime's small shared pieces (the header names, the loop choice), never the
service's domain.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from service.runtime.downstream.deadline import DEADLINE_HEADER
from service.runtime.requestid import REQUEST_ID_HEADER
from service.runtime.settings import NAME
from service.runtime.tracing.w3c import TRACEPARENT

USERS = 1000
DATASETS = ("users", "orders")
DEADLINE_MARGIN = 0.01
# Listen backlog, as the service's own listeners (see ``serving``).
BACKLOG = 1024
_FAIL_KINDS = ("500", "503", "reset", "malformed", "big")


# -- the dataset ---------------------------------------------------------------
def user_number(user_id: str) -> int | None:
    """``"u17"`` -> 17 for the users that exist, else ``None``."""
    if user_id[:1] != "u" or not user_id[1:].isdigit() or user_id[1:2] == "0":
        return None
    n = int(user_id[1:])
    return n if 1 <= n <= USERS else None


def user_record(n: int) -> dict[str, Any]:
    return {
        "id": f"u{n}",
        "name": f"User {n}",
        "email": f"u{n}@example.com",
        "tier": ("free", "pro", "enterprise")[n % 3],
        "created_ts": 1_600_000_000 + n * 86_400,
    }


def order_records(n: int) -> list[dict[str, Any]]:
    """Between 0 and 7 orders for user ``n``, oldest first; the same every time."""
    return [
        {
            "id": f"o{n}-{i}",
            "amount": round(((n * 7919 + i * 104_729) % 20_000) / 100 + 1, 2),
            "ts": 1_700_000_000 + n * 3_600 + i * 86_400,
        }
        for i in range((n * 37) % 8)
    ]


# -- knobs and statistics ------------------------------------------------------
@dataclass
class Knobs:
    """Process-wide misbehaviour; ``POST /control`` changes any of these."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    error_rate: float = 0.0
    reset_rate: float = 0.0


@dataclass
class Stats:
    requests: int = 0
    in_flight: int = 0
    cancelled: int = 0
    errors: int = 0
    resets: int = 0
    deadline_exceeded: int = 0
    by_method: dict[str, int] = field(default_factory=dict)
    # The last request ids seen, so tests can check that the caller forwards them.
    request_ids: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=100)
    )
    # And the last W3C traceparent headers (the caller's trace, when it traces).
    traceparents: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=100)
    )

    def reset(self) -> None:
        in_flight = self.in_flight  # still running; they will decrement it
        self.__init__()  # type: ignore[misc]
        self.in_flight = in_flight

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["request_ids"] = list(self.request_ids)
        data["traceparents"] = list(self.traceparents)
        return data


NAME_KEY = web.AppKey("name", str)
KNOBS = web.AppKey("knobs", Knobs)
STATS = web.AppKey("stats", Stats)
RANDOM = web.AppKey("random", random.Random)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _reset(request: web.Request) -> web.Response:
    """Abort the connection with a TCP RST (SO_LINGER 0), as a crashed peer would."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    # Nothing can be written any more; aiohttp drops this quietly.
    return web.Response(status=500)


@web.middleware
async def misbehave(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count the request, then apply latency, failures and the caller's deadline."""
    if request.path in ("/stats", "/control"):
        return await handler(request)
    knobs, stats, rnd = request.app[KNOBS], request.app[STATS], request.app[RANDOM]
    stats.requests += 1
    stats.by_method[request.method] = stats.by_method.get(request.method, 0) + 1
    rid = request.headers.get(REQUEST_ID_HEADER)
    if rid:
        stats.request_ids.append(rid)
    traceparent = request.headers.get(TRACEPARENT)
    if traceparent:
        stats.traceparents.append(traceparent)
    query = request.query
    fail = query.get("fail")
    if fail is None:
        roll = rnd.random()
        if roll < knobs.reset_rate:
            fail = "reset"
        elif roll < knobs.reset_rate + knobs.error_rate:
            fail = "503"
    latency = float(query.get("latency_ms", knobs.latency_ms)) / 1000
    if knobs.latency_jitter_ms:
        latency += rnd.uniform(0, knobs.latency_jitter_ms / 1000)
    deadline = request.headers.get(DEADLINE_HEADER)
    # Give up a little before the caller does, so the 504 arrives while it still
    # listens and the connection stays reusable (instead of being torn down).
    budget = (
        max(0.0, int(deadline) / 1000 - DEADLINE_MARGIN)
        if deadline and deadline.isdigit()
        else None
    )

    stats.in_flight += 1
    try:
        if latency > 0:
            await asyncio.sleep(latency if budget is None else min(latency, budget))
        if budget is not None and latency > budget:
            stats.deadline_exceeded += 1
            return web.json_response({"error": "deadline exceeded"}, status=504)
        if fail == "reset":
            stats.resets += 1
            return _reset(request)
        if fail in ("500", "503"):
            stats.errors += 1
            return web.json_response({"error": "injected failure"}, status=int(fail))
        if fail == "malformed":
            return web.Response(body=b'{"id": "u1", "name": ', content_type="application/json")
        if fail == "big":
            return web.json_response({"padding": "x" * 2_000_000})
        return await handler(request)
    except asyncio.CancelledError:
        # The caller closed the connection while we were working on its request.
        stats.cancelled += 1
        raise
    finally:
        stats.in_flight -= 1


# -- routes --------------------------------------------------------------------
async def get_user(request: web.Request) -> web.Response:
    n = user_number(request.match_info["user_id"])
    if n is None:
        return web.json_response({"error": "no such user"}, status=404)
    return web.json_response(user_record(n))


async def get_orders(request: web.Request) -> web.Response:
    user_id = request.match_info["user_id"]
    n = user_number(user_id)
    # The orders service knows orders, not users: an unknown user has none.
    return web.json_response({"user_id": user_id, "orders": order_records(n) if n else []})


async def echo(request: web.Request) -> web.Response:
    """A non-idempotent call for the client's tests (``POST`` is never retried)."""
    body = await request.read()
    return web.json_response({"received_bytes": len(body)})


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS].as_json())


async def post_control(request: web.Request) -> web.Response:
    """Change the knobs (JSON object of Knobs fields); ``{"reset_stats": true}`` zeroes stats."""
    data = await request.json()
    knobs = request.app[KNOBS]
    for key, value in data.items():
        if key == "reset_stats":
            if value:
                request.app[STATS].reset()
        elif hasattr(knobs, key):
            setattr(knobs, key, float(value))
        else:
            raise web.HTTPBadRequest(text=f"unknown knob {key}")
    return web.json_response(asdict(knobs))


async def generic(request: web.Request) -> web.Response:
    """Any other downstream: every path answers who was asked for what."""
    return web.json_response({"name": request.app[NAME_KEY], "path": request.path})


def create_app(name: str, knobs: Knobs | None = None, seed: int | None = None) -> web.Application:
    """The stub app for downstream ``name``; run it with ``handler_cancellation``."""
    app = web.Application(middlewares=[misbehave])
    app[NAME_KEY] = name
    app[KNOBS] = knobs or Knobs()
    app[STATS] = Stats()
    app[RANDOM] = random.Random(seed)
    if not NAME.fullmatch(name):
        raise ValueError(f"a stub name is a downstream's name, not {name!r}")
    if name == "users":
        app.router.add_get("/users/{user_id}", get_user)
    elif name == "orders":
        app.router.add_get("/users/{user_id}/orders", get_orders)
    app.router.add_post("/echo", echo)
    app.router.add_get("/stats", get_stats)
    app.router.add_post("/control", post_control)
    if name not in DATASETS:
        app.router.add_get("/{path:.*}", generic)
    return app


@contextlib.asynccontextmanager
async def serving(
    app: web.Application, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[int]:
    """Serve ``app`` on a real socket inside the current loop; yields the bound port.

    ``handler_cancellation=True`` makes aiohttp cancel a handler whose client
    went away, which is what lets the stub count cancelled requests. The
    listen backlog matches the service's: a burst of calls from a service
    with a pool of 1000 connections opens hundreds at once, and aiohttp's
    default of 128 drops the rest's SYNs, which the kernel retries only after
    a second (longer than the service's connect timeout).
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=BACKLOG, reuse_address=True)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()
