"""One service's tracing: the resource, the sampling decision, the export queue, the SDK tracer.

:class:`Tracing` is made by ``service.runtime.tracing.setup`` when
``tracing.enabled`` is on; only then is OpenTelemetry imported. The
runtime's parts ask it for their spans:

* the API middleware: :meth:`Tracing.enter_request` per request (the
  ``traceparent`` read, the sampling decision, the span made current); the
  span is finished with the request's record (``http.records``);
* TCP reads: :meth:`Tracing.start_root`; pipeline batches:
  :meth:`Tracing.linked` (a batch span links to the span contexts of the
  requests and TCP reads that produced its events, which the intake stamps
  on each event's acknowledgement time: :class:`~.context.Acked`);
* downstream calls, executor jobs and a service's own spans:
  :attr:`Tracing.tracer`, the SDK's tracer, with the same sampling
  (parent-based) and the same export queue.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from multidict import CIMultiDictProxy, istr
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    DEFAULT_TRACE_STATE,
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceState,
)
from opentelemetry.util.types import AttributeValue

from service.runtime.log import get_logger, set_trace_ids
from service.runtime.metrics import Metrics
from service.runtime.tracing import context
from service.runtime.tracing.config import TraceConfig
from service.runtime.tracing.context import EMPTY, NOT_SAMPLED, SAMPLED, Acked, attach, set_span
from service.runtime.tracing.export import ExportQueue
from service.runtime.tracing.provider import make_exporter, sdk_sampler, service_resource
from service.runtime.tracing.spans import MAX_LINKS, LightSpan
from service.runtime.tracing.w3c import TRACEPARENT, TRACESTATE, parse_traceparent

log = get_logger("service.tracing")
T = TypeVar("T")

SCOPE = "service.runtime"
_TRACEPARENT, _TRACESTATE = istr(TRACEPARENT), istr(TRACESTATE)
_getrandbits = random.getrandbits


class Tracing:
    """Tracing for one service; :meth:`start` once running, :meth:`close` at shutdown."""

    # The context helpers (service.runtime.tracing.context), reached through the object.
    activate = staticmethod(context.activate)
    deactivate = staticmethod(context.deactivate)
    acked_now = staticmethod(context.acked_now)
    carrier = staticmethod(context.carrier)
    event = staticmethod(context.event)
    event_here = staticmethod(context.event_here)
    fail = staticmethod(context.fail)
    inject = staticmethod(context.inject)

    def __init__(
        self,
        config: TraceConfig,
        metrics: Metrics,
        *,
        name: str,
        version: str,
        exporter: SpanExporter | None = None,
    ) -> None:
        self.config = config
        self.sampling = config.sampling
        self.resource = service_resource(name, version)
        self.scope = InstrumentationScope(SCOPE)
        self.queue = ExportQueue(
            exporter if exporter is not None else make_exporter(config),
            max_queue=config.max_queue,
            batch_size=config.batch_size,
            schedule_delay=config.schedule_delay,
        )
        self.submit = self.queue.submit
        self.provider = TracerProvider(
            sampler=sdk_sampler(config.sampling), resource=self.resource, shutdown_on_exit=False
        )
        self.provider.add_span_processor(self.queue)
        self.tracer = self.provider.get_tracer(SCOPE)
        counter = metrics.counter
        self._m_failures = counter(
            "tracing_export_failures_total",
            "Span exports that failed (the collector refused them or could not be reached).",
        ).labels()
        self._m_dropped = counter(
            "tracing_spans_dropped_total", "Spans dropped because the export queue was full."
        ).labels()
        self._m_exported = counter("tracing_spans_exported_total", "Spans exported.").labels()
        metrics.before_collect.append(self._publish)

    def _publish(self) -> None:
        # The queue's counts are written by its thread; the metrics are loop-owned.
        queue = self.queue
        self._m_failures.value = queue.failures
        self._m_dropped.value = queue.dropped
        self._m_exported.value = queue.exported

    # -- HTTP -----------------------------------------------------------------------
    def enter_request(self, headers: CIMultiDictProxy[str]) -> LightSpan | None:
        """Decide, make the request's span context current; the span when it is sampled.

        A valid ``traceparent`` continues the caller's trace (and, parent-based,
        its sampling decision); without one the request starts a trace. An
        unsampled request still propagates its trace ("not sampled") downstream.
        """
        value = headers.get(_TRACEPARENT)
        parent = None
        if value is not None and (parsed := parse_traceparent(value)) is not None:
            trace_id, parent_id, parent_sampled = parsed
            sampled = self.sampling.follows(trace_id, parent_sampled)
            state_header = headers.get(_TRACESTATE)
            state = TraceState.from_header([state_header]) if state_header else DEFAULT_TRACE_STATE
            parent = SpanContext(
                trace_id, parent_id, True, SAMPLED if parent_sampled else NOT_SAMPLED, state
            )
        else:
            trace_id, sampled = self.sampling.new_trace()
            state = DEFAULT_TRACE_STATE
        ctx = SpanContext(
            trace_id, _getrandbits(64) or 1, False, SAMPLED if sampled else NOT_SAMPLED, state
        )
        if sampled:
            span = LightSpan(ctx, parent)
            attach(set_span(span, EMPTY))
            return span
        attach(set_span(NonRecordingSpan(ctx), EMPTY))
        return None

    # -- spans of the runtime's own ---------------------------------------------------
    def _ended(self, span: LightSpan) -> None:
        self.submit((span.readable(self.resource, self.scope),))

    def start_root(
        self, name: str, kind: SpanKind, attributes: dict[str, AttributeValue]
    ) -> trace.Span:
        """A span that starts a trace: recording when sampled (a TCP read, say)."""
        trace_id, sampled = self.sampling.new_trace()
        if not sampled:
            return NonRecordingSpan(
                SpanContext(trace_id, _getrandbits(64) or 1, False, NOT_SAMPLED)
            )
        ctx = SpanContext(trace_id, _getrandbits(64) or 1, False, SAMPLED)
        return LightSpan.begin(ctx, name, kind, attributes, self._ended)

    def start_linked(
        self, name: str, producers: Iterable[float], attributes: dict[str, AttributeValue]
    ) -> LightSpan | None:
        """A batch's span, linked to the sampled producers of its items; None when there are none.

        ``producers`` are the items' acknowledgement times: :class:`Acked` ones
        carry a sampled producer's span context (plain floats, none).
        """
        links: dict[tuple[int, int], Link] = {}  # by ids: a SpanContext's TraceState is unhashable
        for acked in producers:
            if type(acked) is Acked:
                ctx = acked.span
                key = (ctx.trace_id, ctx.span_id)
                if key not in links:
                    links[key] = Link(ctx)
        if not links:
            return None
        if len(links) > MAX_LINKS:
            attributes["links.dropped"] = len(links) - MAX_LINKS
        ctx = SpanContext(_getrandbits(128) or 1, _getrandbits(64) or 1, False, SAMPLED)
        return LightSpan.begin(
            ctx, name, SpanKind.CONSUMER, attributes, self._ended, list(links.values())
        )

    async def linked(
        self,
        name: str,
        producers: Iterable[float],
        attributes: dict[str, AttributeValue],
        call: Callable[[], Awaitable[T]],
    ) -> T:
        """``await call()`` in a batch span linked to its sampled producers (if there are any)."""
        span = self.start_linked(name, producers, attributes)
        if span is None:
            return await call()
        token = context.activate(span)
        try:
            return await call()
        except Exception as exc:
            span.record_exception(exc)
            span.fail(type(exc).__name__)
            raise
        finally:
            context.deactivate(token)
            span.end()

    def stage_batch(
        self, stage: str, batch: list[tuple[str, Any, float]], call: Callable[[], Awaitable[T]]
    ) -> Awaitable[T]:
        """A pipeline stage's batch (``(id, value, acknowledged at)`` items) in its span."""
        return self.linked(
            f"pipeline {stage}",
            (acked for _, _, acked in batch),
            {"pipeline.stage": stage, "pipeline.batch.events": len(batch)},
            call,
        )

    # -- downstream calls (the SDK tracer: parent-based on the request's span) ----------
    def client_span(self, name: str, attributes: dict[str, AttributeValue]) -> trace.Span:
        return self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)

    def attempt_span(self, method: str, url: str, resend_count: int) -> trace.Span:
        attributes: dict[str, AttributeValue] = {"http.request.method": method, "url.full": url}
        if resend_count:
            attributes["http.request.resend_count"] = resend_count
        return self.tracer.start_span(method, kind=SpanKind.CLIENT, attributes=attributes)

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self.queue.start()
        set_trace_ids(context.current_ids)
        # A malformed tracestate header is dropped (W3C says so) with a warning line
        # per request from the API: log spam that any client can cause.
        logging.getLogger("opentelemetry.trace.span").setLevel(logging.ERROR)

    async def close(self, timeout: float) -> None:
        """Stop taking spans; export what is queued within ``timeout``, never blocking the loop."""
        set_trace_ids(None)
        left = await self.queue.close(min(timeout, self.config.export_timeout))
        if left:
            log.warning("spans not exported at shutdown", spans=left, timeout=timeout)


__all__ = ["Acked", "Tracing"]
