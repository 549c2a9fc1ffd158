"""``create_app(settings)``: the demo's parts on the runtime's, wired in one place.

Wiring only: the runtime (``service.runtime``) brings the API middleware,
health routes, executors and the lifecycle; the demo domain
(``service.domain``) brings its downstreams, its pipeline stage and
encoder, its TCP line handler and its routes. A new route is its module
plus one line here; a new stage, one entry in the stage list; a new
downstream, a ``[downstream.services.<name>]`` entry (and a client class
in ``CLIENTS`` when it needs more than JSON calls).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from service import __version__
from service.domain.downstreams import CLIENTS, users
from service.domain.enrich import EnrichStage, encode_record
from service.domain.routes import events, hash, summary
from service.domain.tcp_events import EventLines
from service.runtime.appkit import api_app, downstreams, pipeline, tcp_server
from service.runtime.http import openapi
from service.runtime.keys import METRICS, PIPELINE, SETTINGS
from service.runtime.metrics import Metrics
from service.runtime.pipeline import Stage
from service.runtime.state import ServiceState
from service.settings import Settings

OPENAPI = Path(__file__).resolve().parent / "domain" / "openapi.yaml"


def create_app(
    settings: Settings, *, metrics: Metrics | None = None, state: ServiceState | None = None
) -> web.Application:
    app = api_app(
        settings,
        metrics=metrics or Metrics(settings.metrics.namespace),
        state=state or ServiceState(),
        name=settings.metrics.namespace,
        version=__version__,
    )
    # Resources: started in this order, closed in reverse.
    app.cleanup_ctx.append(downstreams(CLIENTS))
    app.cleanup_ctx.append(pipeline(stages, encode_record))
    app.cleanup_ctx.append(tcp_server(line_handler))  # last: it feeds the pipeline
    # Routes: one line each.
    events.setup(app, settings.events)
    hash.setup(app, settings.hash)
    summary.setup(app)
    openapi.setup(app, OPENAPI)
    return app


def stages(app: web.Application) -> list[Stage]:
    """The pipeline's stages, in order: one line each."""
    return [
        EnrichStage(users(app), app[METRICS]),
    ]


def line_handler(app: web.Application) -> EventLines:
    """What answers each TCP line: the demo's JSON events."""
    return EventLines(app[PIPELINE], app[SETTINGS].tcp.overload_timeout)
