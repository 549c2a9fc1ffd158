"""Every typed ``web.AppKey`` of the service, in one place."""

from __future__ import annotations

from aiohttp import web

from service.config import Settings
from service.downstream import Downstreams
from service.log import AccessLog
from service.metrics import Metrics
from service.middleware import ApiMiddleware
from service.offload import Offload
from service.pipeline import Pipeline
from service.sinks import Sink
from service.state import ServiceState
from service.tcp import TcpServer

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
STATE = web.AppKey("state", ServiceState)
ACCESS_LOG = web.AppKey("access_log", AccessLog)
OFFLOAD = web.AppKey("offload", Offload)
DOWNSTREAM = web.AppKey("downstream", Downstreams)
TCP_SERVER = web.AppKey("tcp_server", TcpServer)
PIPELINE = web.AppKey("pipeline", Pipeline)
# Set before start-up to replace the backend `pipeline.sink` names (tests stall the sink).
SINK: web.AppKey[Sink] = web.AppKey("sink")
# The one middleware (service.middleware); the lifecycle's runner hoists it to the
# server (service.httpserver) to save aiohttp's per-request middleware layers.
HTTP_MIDDLEWARE = web.AppKey("http_middleware", ApiMiddleware)
