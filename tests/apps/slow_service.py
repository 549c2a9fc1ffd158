"""The real service plus a slow GET and a slow POST route, for the shutdown tests.

    python -m tests.apps.slow_service        # same settings and env as `service serve`

``GET /test/slow?seconds=S`` answers after S seconds; ``POST /test/slow`` reads
its whole body, waits ``seconds`` (query, default 0.05) and answers the byte
count. Both go through the full middleware stack, so draining, metrics and
``Connection: close`` behave exactly as for the real API routes.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from service.runtime.lifecycle import Service
from tests.apps import serve_with


async def slow_get(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("seconds", "1")))
    return web.json_response({"slept": True})


async def slow_post(request: web.Request) -> web.Response:
    body = await request.read()
    await asyncio.sleep(float(request.query.get("seconds", "0.05")))
    return web.json_response({"received": len(body)})


def add_routes(service: Service) -> None:
    service.app.router.add_get("/test/slow", slow_get)
    service.app.router.add_post("/test/slow", slow_post)


def main() -> int:
    return serve_with("slow_service", add_routes)


if __name__ == "__main__":
    raise SystemExit(main())
