"""The spans the runtime records itself: cheap to make, handed to the exporter as the SDK's data.

Why not the SDK's ``Tracer`` for these: measured on this machine, an SDK span
costs 13-25 us to start and end (sampler call, id generator, bounded
attributes, a lock per span, the span processor called twice) and an
unsampled one still about 9 us, while a whole ``GET /v1/info`` costs about
35 us. So the spans made once per HTTP request, per TCP read and per
pipeline batch are made here: the sampling decision comes first
(:class:`~.config.Sampling`), an unsampled request gets only the API's
``NonRecordingSpan`` (enough to propagate the trace and its "not sampled"
flag), and a sampled one a :class:`LightSpan`. It records what an SDK span
would and, once it ends, becomes a ``ReadableSpan``: the SDK's export data
model, what every span exporter takes (the HTTP server span becomes one in
the batch that the request metrics are counted from, ``http.records``).

A :class:`LightSpan` is a full ``opentelemetry.trace.Span``: a handler may
add attributes and events to its request's span, and the SDK's ``Tracer``
(:attr:`.core.Tracing.tracer`, used for downstream calls and a service's
own spans) parents its spans on it like on any other.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping, Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util.types import Attributes, AttributeValue

# The SDK's default span limits (OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT and friends).
MAX_ATTRIBUTES = 128
MAX_EVENTS = 128
MAX_LINKS = 128

_UNSET = Status(StatusCode.UNSET)


class LightSpan(trace.Span):
    """A recording span without the SDK's machinery; :meth:`readable` is its exported form.

    Made two ways: the API middleware makes one with only its context and
    parent (name, times and attributes come from the request's record when
    the batch is settled); :meth:`begin` makes a complete one that calls
    ``on_end`` with itself when it ends (TCP reads, pipeline batches).
    """

    # Class defaults: a request's span sets only its context and parent.
    name = ""
    kind = SpanKind.SERVER
    start_ns = 0
    end_ns = 0
    _attributes: dict[str, AttributeValue] | None = None
    _events: list[Event] | None = None
    _links: Sequence[Link] = ()
    _status = _UNSET
    _on_end: Callable[[LightSpan], None] | None = None

    def __init__(self, context: SpanContext, parent: SpanContext | None = None) -> None:
        self._context = context
        self.parent = parent

    @classmethod
    def begin(
        cls,
        context: SpanContext,
        name: str,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        on_end: Callable[[LightSpan], None],
        links: Sequence[Link] = (),
        parent: SpanContext | None = None,
    ) -> LightSpan:
        span = cls(context, parent)
        span.name = name
        span.kind = kind
        span.start_ns = time.time_ns()
        span._attributes = attributes
        span._links = links[:MAX_LINKS]
        span._on_end = on_end
        return span

    # -- opentelemetry.trace.Span ---------------------------------------------------
    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return not self.end_ns

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        attributes = self._attributes
        if attributes is None:
            attributes = self._attributes = {}
        if len(attributes) < MAX_ATTRIBUTES or key in attributes:
            attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        events = self._events
        if events is None:
            events = self._events = []
        if len(events) < MAX_EVENTS:
            events.append(Event(name, attributes, timestamp or time.time_ns()))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if len(self._links) < MAX_LINKS:
            self._links = [*self._links, Link(context, attributes)]

    def update_name(self, name: str) -> None:
        self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self._status = status if isinstance(status, Status) else Status(status, description)

    def fail(self, description: str) -> None:
        """Status ERROR with ``description``, unless a status was set already."""
        if self._status is _UNSET:
            self._status = Status(StatusCode.ERROR, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        # The same event the SDK's Span records (OpenTelemetry's exception semantic conventions).
        event: dict[str, AttributeValue] = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": escaped,
        }
        self.add_event("exception", {**event, **(attributes or {})}, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_ns:
            return
        self.end_ns = end_time or time.time_ns()
        if self._on_end is not None:
            self._on_end(self)

    # -- export -----------------------------------------------------------------------
    def readable(
        self,
        resource: Resource,
        scope: InstrumentationScope,
        attributes: dict[str, AttributeValue] | None = None,
    ) -> ReadableSpan:
        """The span as exporters take it; ``attributes`` go under what was set on it."""
        own = self._attributes
        if attributes is None:
            attributes = own or {}
        elif own:
            attributes.update(own)
        return ReadableSpan(
            name=self.name,
            context=self._context,
            parent=self.parent,
            resource=resource,
            attributes=attributes,
            events=self._events or (),
            links=self._links,
            kind=self.kind,
            status=self._status,
            start_time=self.start_ns,
            end_time=self.end_ns,
            instrumentation_scope=scope,
        )

    def __repr__(self) -> str:
        ctx = self._context
        return f"LightSpan({self.name!r}, trace_id={ctx.trace_id:032x}, span_id={ctx.span_id:016x})"


def ids(span: trace.Span) -> tuple[str, str] | None:
    """The hex trace and span ids of a sampled span (what logs and exemplars carry), else None."""
    ctx = span.get_span_context()
    if not ctx.trace_flags & 1:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


__all__ = ["MAX_LINKS", "LightSpan", "Link", "ids"]
