"""Every typed ``web.AppKey`` of the runtime, in one place.

Handlers reach the runtime's parts through these; a domain that needs keys
of its own keeps them in its own ``keys`` module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from service.runtime.config import RuntimeSettings
from service.runtime.downstream.registry import Downstreams
from service.runtime.http.middleware import ApiMiddleware
from service.runtime.log.access import AccessLog
from service.runtime.metrics import Metrics
from service.runtime.offload import Offload
from service.runtime.pipeline.engine import Pipeline
from service.runtime.pipeline.sinks import Sink
from service.runtime.state import ServiceState
from service.runtime.tcp import TcpServer

if TYPE_CHECKING:
    from service.runtime.tracing.core import Tracing

SETTINGS = web.AppKey("settings", RuntimeSettings)
METRICS = web.AppKey("metrics", Metrics)
STATE = web.AppKey("state", ServiceState)
ACCESS_LOG = web.AppKey("access_log", AccessLog)
OFFLOAD = web.AppKey("offload", Offload)
DOWNSTREAMS = web.AppKey("downstreams", Downstreams)
TCP_SERVER = web.AppKey("tcp_server", TcpServer)
PIPELINE = web.AppKey("pipeline", Pipeline)
# Set before start-up to replace the backend `pipeline.sink` names (tests stall the sink).
SINK: web.AppKey[Sink] = web.AppKey("sink")
# The one middleware (service.runtime.http.middleware); the HTTP listener hoists it to the
# server (service.runtime.http.server) to save aiohttp's per-request middleware layers.
HTTP_MIDDLEWARE = web.AppKey("http_middleware", ApiMiddleware)
# Set only while tracing is on (service.runtime.tracing): what a handler's own spans come from.
TRACING: web.AppKey[Tracing] = web.AppKey("tracing")
