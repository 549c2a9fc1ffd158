"""The real service plus routes that break it on purpose, for the fault tests.

    python -m tests.apps.fault_service        # same settings and env as `service serve`

``GET /test/block?seconds=S`` blocks the event loop for S seconds (a
synchronous ``time.sleep`` in a handler: the bug the watchdog is for).
``POST /test/break/{what}`` plants a bug in a core worker: ``stage`` (the
pipeline's first stage returns nothing, its worker fails on the next
event), ``sink`` (the sink writer fails on its next batch) or ``tcp`` (the
TCP server's sweeper fails on its next sweep).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from service.runtime.keys import PIPELINE, TCP_SERVER
from service.runtime.lifecycle import Service
from tests.apps import serve_with


async def block(request: web.Request) -> web.Response:
    seconds = float(request.query.get("seconds", "3"))
    time.sleep(seconds)  # blocks the loop on purpose
    return web.json_response({"blocked": seconds})


async def _returns_nothing(values: list[Any]) -> Any:
    return None  # not one value per value: the worker's own check fails on it


async def _fails(*_: Any) -> None:
    raise RuntimeError("injected failure")


def _fails_now(*_: Any) -> None:
    raise RuntimeError("injected failure")


async def break_worker(request: web.Request) -> web.Response:
    what = request.match_info["what"]
    app = request.config_dict
    if what == "stage":
        app[PIPELINE].stages[0].process = _returns_nothing  # type: ignore[method-assign]
    elif what == "sink":
        app[PIPELINE].writer.deliver = _fails  # type: ignore[method-assign]
    elif what == "tcp":
        app[TCP_SERVER]._expire = _fails_now  # type: ignore[method-assign]
    else:
        raise web.HTTPNotFound()
    return web.json_response({"broken": what})


def add_routes(service: Service) -> None:
    service.app.router.add_get("/test/block", block)
    service.app.router.add_post("/test/break/{what}", break_worker)


def main() -> int:
    return serve_with("fault_service", add_routes)


if __name__ == "__main__":
    raise SystemExit(main())
