"""Liveness, readiness and service info.

``/livez`` answers while the event loop does. ``/readyz`` answers 200 while
serving: 503 during start-up, from the first moment of shutdown, and while
any component's readiness check fails (the pipeline's: its sink cannot
write, so a load balancer should prefer another replica).
``/v1/info`` is the cheapest route through the whole middleware stack.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from service.runtime.state import ServiceState

_LIVE = orjson.dumps({"status": "ok"})
_READY = orjson.dumps({"status": "ready"})
_NOT_READY = orjson.dumps({"status": "not ready"})


async def livez(request: web.Request) -> web.Response:
    """200 while the event loop answers: the cheapest possible handler."""
    return web.Response(body=_LIVE, content_type="application/json")


def readyz_handler(state: ServiceState) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /readyz``: 200 while ``state`` says the service is ready, else 503."""

    async def readyz(request: web.Request) -> web.Response:
        if state.is_ready():
            return web.Response(body=_READY, content_type="application/json")
        return web.Response(body=_NOT_READY, status=503, content_type="application/json")

    return readyz


def info_handler(
    state: ServiceState, name: str, version: str
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /v1/info``: what it needs is looked up once, here, not per request."""
    started = state.started_monotonic
    monotonic = time.monotonic

    async def info(request: web.Request) -> web.Response:
        body = orjson.dumps(
            {
                "name": name,
                "version": version,
                "uptime_seconds": round(monotonic() - started, 3),
            }
        )
        return web.Response(body=body, content_type="application/json")

    return info


def setup(app: web.Application, state: ServiceState, *, name: str, version: str) -> None:
    app.router.add_get("/livez", livez, allow_head=False)
    app.router.add_get("/readyz", readyz_handler(state), allow_head=False)
    app.router.add_get("/v1/info", info_handler(state, name, version), allow_head=False)
