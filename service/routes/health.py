"""Liveness, readiness and service info."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from service import __version__
from service.keys import PIPELINE, SETTINGS, STATE

_LIVE = orjson.dumps({"status": "ok"})
_READY = orjson.dumps({"status": "ready"})
_NOT_READY = orjson.dumps({"status": "not ready"})


async def livez(request: web.Request) -> web.Response:
    """200 while the event loop answers: the cheapest possible handler."""
    return web.Response(body=_LIVE, content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    """200 while serving; 503 during start-up, from the first moment of shutdown,
    and while the pipeline's sink cannot write (e.g. Redis is down: events would
    only queue up, so a load balancer should prefer another replica).
    """
    app = request.app
    pipeline = app.get(PIPELINE)
    if app[STATE].ready and (pipeline is None or pipeline.healthy):
        return web.Response(body=_READY, content_type="application/json")
    return web.Response(body=_NOT_READY, status=503, content_type="application/json")


def info_handler(app: web.Application) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /v1/info`` for ``app``: what it needs is looked up once, here, not per request."""
    name = app[SETTINGS].metrics.namespace
    started = app[STATE].started_monotonic
    monotonic = time.monotonic

    async def info(request: web.Request) -> web.Response:
        body = orjson.dumps({
            "name": name,
            "version": __version__,
            "uptime_seconds": round(monotonic() - started, 3),
        })
        return web.Response(body=body, content_type="application/json")

    return info


def setup(app: web.Application) -> None:
    app.router.add_get("/livez", livez, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/v1/info", info_handler(app), allow_head=False)
