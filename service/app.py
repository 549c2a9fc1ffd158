"""``create_app(settings)``: routes, middlewares and one cleanup context per resource.

The factory only wires. Listeners are started by ``service.lifecycle``;
resources are created and closed by their ``cleanup_ctx`` generators, in
the start order of ../shared/ARCHITECTURE.md (and closed in reverse).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from service.config import Settings
from service.downstream import open_downstreams
from service.keys import (
    ACCESS_LOG,
    DOWNSTREAM,
    HTTP_MIDDLEWARE,
    METRICS,
    OFFLOAD,
    PIPELINE,
    SETTINGS,
    SINK,
    STATE,
    TCP_SERVER,
)
from service.log import AccessLog
from service.metrics import Metrics
from service.middleware import ApiMiddleware
from service.monitor import monitoring
from service.offload import Offload
from service.pipeline import Pipeline
from service.routes import events, hash, health, openapi, summary
from service.sinks import make_sink
from service.state import ServiceState
from service.tcp import TcpServer


def create_app(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    state: ServiceState | None = None,
) -> web.Application:
    metrics = metrics or Metrics(settings.metrics.namespace)
    state = state or ServiceState()
    access_log = AccessLog(settings.log)
    middleware = ApiMiddleware(metrics, state, access_log)
    app = web.Application(
        middlewares=[middleware.middleware],
        client_max_size=settings.http.max_body_bytes,
        handler_args={"keepalive_timeout": settings.http.keepalive_timeout},
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[STATE] = state
    app[ACCESS_LOG] = access_log
    app[HTTP_MIDDLEWARE] = middleware
    app.on_startup.append(middleware.claim)

    app.cleanup_ctx.append(_monitoring)
    app.cleanup_ctx.append(_offload)
    app.cleanup_ctx.append(_downstream)
    app.cleanup_ctx.append(_pipeline)
    app.cleanup_ctx.append(_tcp_server)  # last: it feeds the pipeline
    events.setup(app)
    health.setup(app)
    hash.setup(app)
    openapi.setup(app)
    summary.setup(app)
    return app


async def _monitoring(app: web.Application) -> AsyncIterator[None]:
    async with monitoring(app[METRICS], app[SETTINGS].metrics.loop_lag_interval):
        yield


async def _offload(app: web.Application) -> AsyncIterator[None]:
    # Closed after everything that submits jobs; running jobs get half of the
    # step-5 budget, then they are abandoned (counted in the summary line).
    s = app[SETTINGS]
    offload = Offload(s.offload, app[METRICS], log_settings=s.log)
    app[OFFLOAD] = offload
    app[STATE].summaries.append(offload.summary)
    yield
    await offload.close(s.shutdown.cancel_seconds / 2)


async def _pipeline(app: web.Application) -> AsyncIterator[None]:
    # Registered as a Drain: the lifecycle drains it in shutdown step 4, before
    # this context closes it (and the sink) in step 5.
    # Enrichment looks users up through the users downstream client (TTL cache,
    # single-flight); a failed lookup writes the event unenriched, never drops it.
    s = app[SETTINGS]
    sink = app.get(SINK)
    if sink is None:
        sink = make_sink(s.pipeline, executor=app[OFFLOAD].io)
    async with Pipeline(s.pipeline, app[METRICS], app[DOWNSTREAM].users, sink) as pipeline:
        app[PIPELINE] = pipeline
        app[STATE].drains.append(pipeline)
        yield


async def _tcp_server(app: web.Application) -> AsyncIterator[None]:
    # The lifecycle starts and stops it as a Listener; this only owns the object.
    # Events it acknowledges go to the pipeline's intake.
    server = TcpServer(app[SETTINGS].tcp, app[METRICS], intake=app[PIPELINE])
    app[TCP_SERVER] = server
    app[STATE].listeners.append(server)
    yield
    await server.close()


async def _downstream(app: web.Application) -> AsyncIterator[None]:
    # One ClientSession per downstream, closed after the pipeline has drained.
    async with open_downstreams(app[SETTINGS].downstream, app[METRICS]) as downstreams:
        app[DOWNSTREAM] = downstreams
        yield
