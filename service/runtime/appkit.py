"""The parts a service's app factory wires: a public app, and one cleanup context per resource.

A service's ``create_app`` (the demo's is ``service.app``) starts from
:func:`api_app`, which brings the API middleware, the health routes and the
resources every service has (the loop monitor, the executors), then appends
what it uses, each a ``cleanup_ctx`` generator (create, ``yield``, close)::

    app = api_app(settings, metrics=metrics, state=state, name="orders", version="1.0")
    app.cleanup_ctx.append(downstreams({"users": UsersClient}))
    app.cleanup_ctx.append(pipeline(lambda app: [EnrichStage(...)], encode_record))
    app.cleanup_ctx.append(tcp_server(lambda app: EventLines(app[PIPELINE], ...)))
    events.setup(app, settings.events)          # a route module: one line

Contexts start in the order appended and close in reverse, which gives the
start order settings -> executors -> downstream sessions -> pipeline -> TCP,
and closes the pipeline (after its drain) before the sessions it uses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from service.runtime import tracing as tracing_setup
from service.runtime.config import RuntimeSettings
from service.runtime.downstream.registry import ClientFactory, open_downstreams
from service.runtime.http import compat, health
from service.runtime.http.middleware import ApiMiddleware
from service.runtime.http.records import RequestRecords
from service.runtime.keys import (
    ACCESS_LOG,
    DOWNSTREAMS,
    HTTP_MIDDLEWARE,
    METRICS,
    OFFLOAD,
    PIPELINE,
    SETTINGS,
    SINK,
    STATE,
    TCP_SERVER,
    TRACING,
)
from service.runtime.log.access import AccessLog
from service.runtime.metrics import Metrics
from service.runtime.monitor import monitoring
from service.runtime.offload import Offload
from service.runtime.pipeline import Encode, Pipeline, Stage, encode_json
from service.runtime.pipeline.sinks import make_sink
from service.runtime.state import ServiceState
from service.runtime.tcp import LineHandler, TcpServer

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


class AppFactory(Protocol):
    """A service's ``create_app``: what the lifecycle calls to build the public app."""

    def __call__(
        self, settings: Any, *, metrics: Metrics, state: ServiceState
    ) -> web.Application: ...


def api_app(
    settings: RuntimeSettings, *, metrics: Metrics, state: ServiceState, name: str, version: str
) -> web.Application:
    """The public app: API middleware, ``/livez``, ``/readyz``, ``/v1/info``, monitor, executors.

    With ``tracing.enabled``, also tracing (``app[TRACING]``): the middleware is
    built traced and the resources below are given it.
    """
    tracing = tracing_setup.setup(settings.tracing, metrics, name=name, version=version)
    access_log = AccessLog(settings.log)
    records = RequestRecords(metrics, access_log, tracing)
    middleware = ApiMiddleware(
        records,
        state,
        metrics.http_in_flight.labels(),
        compat.detect(settings.http.fast_path),
        tracing=tracing,
    )
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

    async def claim(app: web.Application) -> None:
        records.claim()  # the thread serving this app settles its records

    app.on_startup.append(claim)
    if tracing is not None:
        app[TRACING] = tracing
        # First, so it closes last: after every resource that makes spans.
        app.cleanup_ctx.append(_tracing(records))
    app.cleanup_ctx.append(_monitoring)
    app.cleanup_ctx.append(_offload)
    health.setup(app, state, name=name, version=version)
    return app


def _tracing(records: RequestRecords) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        tracing = app[TRACING]
        tracing.start()
        yield
        records.settle()  # the last requests' spans, before the queue closes
        # Bounded like the executors' close; a dead collector costs this much at most.
        await tracing.close(app[SETTINGS].shutdown.cancel_seconds / 2)

    return ctx


async def _monitoring(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    async with monitoring(app[METRICS], s.metrics.loop_lag_interval, s.loop.stall_seconds):
        yield


async def _offload(app: web.Application) -> AsyncIterator[None]:
    # Closed after everything that submits jobs; running jobs get half of the
    # step-5 budget, then they are abandoned (counted in the summary line).
    s = app[SETTINGS]
    offload = Offload(s.offload, app[METRICS], log_settings=s.log, tracing=app.get(TRACING))
    offload.serve_as_default()  # run_in_executor(None, ...) and to_thread run on offload.io
    app[OFFLOAD] = offload
    app[STATE].summaries.append(offload.summary)
    yield
    await offload.close(s.shutdown.cancel_seconds / 2)


def downstreams(declared: Mapping[str, ClientFactory] | None = None) -> CleanupCtx:
    """One client session per ``[downstream.services]`` entry, closed after the pipeline drained."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_downstreams(
            app[SETTINGS].downstream, app[METRICS], declared, tracing=app.get(TRACING)
        ) as found:
            app[DOWNSTREAMS] = found
            yield

    return ctx


def pipeline(
    stages: Callable[[web.Application], Sequence[Stage]], encode: Encode = encode_json
) -> CleanupCtx:
    """The pipeline with the stages ``stages(app)`` makes (they may use earlier resources).

    Registered as a Drain: the lifecycle drains it in shutdown step 4, before
    this context closes it (and the sink) in step 5. ``app[SINK]``, when set
    before start-up, replaces the backend ``pipeline.sink`` names.
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        s = app[SETTINGS]
        sink = app.get(SINK) or make_sink(s.pipeline, executor=app[OFFLOAD].io)
        async with Pipeline(
            s.pipeline, app[METRICS], stages(app), sink, encode, tracing=app.get(TRACING)
        ) as running:
            app[PIPELINE] = running
            app[STATE].drains.append(running)
            app[STATE].checks.append(lambda: running.healthy)
            if running.task is not None:
                app[STATE].watch(running.task, "pipeline")
            yield

    return ctx


def tcp_server(handler: Callable[[web.Application], LineHandler]) -> CleanupCtx:
    """The TCP server with the line handler ``handler(app)`` makes; a listener of the lifecycle."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        server = TcpServer(
            app[SETTINGS].tcp,
            app[METRICS],
            handler(app),
            app[STATE].watch,
            tracing=app.get(TRACING),
        )
        app[TCP_SERVER] = server
        app[STATE].listeners.append(server)
        yield
        await server.close()

    return ctx
