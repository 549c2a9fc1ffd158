"""OpenTelemetry tracing: off by default (``tracing.enabled``), and free when off.

With tracing off nothing of it is on any path: the API middleware, the
request records, the downstream client, the TCP connections, the pipeline
and the executors are built as before, and OpenTelemetry is not even
imported (a service without the ``tracing`` extra runs the same). With it
on, one trace follows the work across the service:

* HTTP: W3C ``traceparent``/``tracestate`` accepted, a server span per
  request (``http.middleware``, finished in ``http.records``); its log lines,
  its access line and the request-duration histogram's exemplars carry the
  trace id;
* downstream calls: a client span per call, a child per attempt (retries),
  breaker and bulkhead refusals as events, ``traceparent`` sent downstream
  (``downstream.client``);
* executor jobs run in the submitter's span context (``offload``);
* TCP: a span per read of event lines, with the client's address (``tcp.traced``);
* pipeline: each stage batch and each sink write is a span linked to the
  spans that produced its events (``pipeline.engine``, ``pipeline.writer``).

OpenTelemetry's own instrumentations are not used, for cost and behaviour:
aiohttp-server's is a middleware of its own (a layer per request) that makes
an SDK span for every request, sampled or not, while the runtime's middleware
already times each request (its span is made from that record, in batches);
aiohttp-client's sees single HTTP requests, not a call with its retries and
the breaker's and bulkhead's refusals, and hooks aiohttp's trace signals
into every request of a session; redis's puts every command of a pipelined
batch into one statement attribute, where the sink writes thousands of
events in one script call (the sink write is one span here, with links).

The modules: :mod:`.config` (the ``OTEL_*`` variables, no OpenTelemetry
import), :mod:`.w3c` (``traceparent``), :mod:`.spans` (the runtime's cheap
recording span), :mod:`.export` (the export queue and its thread),
:mod:`.core` (:class:`~.core.Tracing`, what the runtime's parts call).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from service.runtime.errors import ConfigError
from service.runtime.metrics import Metrics
from service.runtime.settings import TracingSettings
from service.runtime.tracing.config import TraceConfig, sdk_disabled

if TYPE_CHECKING:
    from service.runtime.tracing.core import Tracing


def setup(
    settings: TracingSettings,
    metrics: Metrics,
    *,
    name: str,
    version: str,
    environ: Mapping[str, str] | None = None,
) -> Tracing | None:
    """The service's :class:`~.core.Tracing` when tracing is on, else None.

    Raises :class:`ConfigError` for a bad ``OTEL_*`` value, or when tracing
    is on without the ``tracing`` extra installed.
    """
    env = os.environ if environ is None else environ
    if not settings.enabled or sdk_disabled(env):
        return None
    config = TraceConfig.from_env(env)
    try:
        from service.runtime.tracing.core import Tracing
    except ImportError as exc:
        raise ConfigError(
            "tracing.enabled",
            f"needs the tracing extra (pip install '.[tracing]'): {exc.name} is missing",
        ) from None
    return Tracing(config, metrics, name=name, version=version)


__all__ = ["TraceConfig", "setup"]
