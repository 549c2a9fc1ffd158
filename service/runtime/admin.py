"""The admin app: /metrics (Prometheus text or OpenMetrics) and /debug/tasks on their own listener.

Not for the public: it binds to loopback by default (``admin.host``) and is a
separate ``web.Application``, so none of its routes exist on the public port.
"""

from __future__ import annotations

import orjson
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from service.runtime.http.problem import errors_only
from service.runtime.keys import METRICS, SETTINGS, STATE
from service.runtime.monitor import task_dump


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    app[METRICS].ready_child.set(1.0 if app[STATE].ready else 0.0)
    # The OpenMetrics format when the scraper asks for it (Prometheus does when
    # it stores exemplars): only it carries the request histogram's trace-id
    # exemplars (tracing on); the classic text format otherwise.
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    # Rendering runs on the loop on purpose: the fast metrics are loop-owned.
    body = encode(app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def debug_tasks(request: web.Request) -> web.Response:
    if not request.app[SETTINGS].admin.debug:
        raise web.HTTPNotFound(text="debug endpoints are off (admin.debug)")
    body = orjson.dumps(task_dump(request.app[METRICS].task_groups))
    return web.Response(body=body, content_type="application/json")


def create_admin_app(public: web.Application) -> web.Application:
    """The admin app shares the public app's settings, metrics and state."""
    admin = web.Application(middlewares=[errors_only])
    admin[SETTINGS] = public[SETTINGS]
    admin[METRICS] = public[METRICS]
    admin[STATE] = public[STATE]
    admin.router.add_get("/metrics", metrics)
    admin.router.add_get("/debug/tasks", debug_tasks)
    return admin
