"""The current span: made current, read for logs and job carriers, stamped on pipeline events.

Every request, TCP read and pipeline batch starts a context of its own
(:func:`activate` on an empty context); a downstream call's span nests in
the current one (``fresh=False``). A token must be detached in the task
that attached it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import inject as _inject
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from service.runtime.log import set_trace_ids
from service.runtime.tracing.spans import ids
from service.runtime.tracing.w3c import format_traceparent, parse_traceparent

SAMPLED, NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)
EMPTY = Context()
attach = otel_context.attach
set_span = trace.set_span_in_context
current_span = trace.get_current_span
_monotonic = time.monotonic


class Acked(float):
    """An event's acknowledgement time (``time.monotonic``) that also carries the span
    context of the request or TCP read that produced it.

    The pipeline keeps ``(id, value, acknowledged at)`` per event; with
    tracing on, the intake stamps this float subclass instead, so the
    pipeline's shapes and its cost with tracing off stay as they are.
    """

    __slots__ = ("span",)
    span: SpanContext


def activate(span: trace.Span, *, fresh: bool = True) -> object:
    """Make ``span`` current (in a context of its own when ``fresh``); the token for
    :func:`deactivate`, which must run in the same task."""
    return attach(set_span(span, EMPTY if fresh else None))


def deactivate(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]


def acked_now() -> float:
    """``time.monotonic()``, stamped with the current span context when it is sampled."""
    now = _monotonic()
    ctx = current_span().get_span_context()
    if not ctx.trace_flags & 1:
        return now
    stamped = Acked(now)
    stamped.span = ctx
    return stamped


def event(reason: str, service: str, retry_after: float) -> None:
    """A call refused before it was sent (breaker, bulkhead): an event on the current span."""
    current_span().add_event(
        reason, {"downstream.service": service, "retry_after_seconds": retry_after}
    )


def event_here(name: str, **attributes: AttributeValue) -> None:
    """An event on the current span (nothing outside a recording one)."""
    current_span().add_event(name, attributes)


def fail(span: trace.Span, description: str) -> None:
    span.set_status(Status(StatusCode.ERROR, description))


def inject(span: trace.Span, headers: dict[str, str]) -> None:
    """``span``'s context into ``headers``, by the configured propagators (W3C by default)."""
    _inject(headers, context=set_span(span, EMPTY))


def current_ids() -> tuple[str, str] | None:
    """The current span's hex trace and span ids when it is sampled (for log lines)."""
    return ids(current_span())


def carrier() -> str | None:
    """The current span's ``traceparent`` (for a job in another process), or None."""
    ctx = current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format_traceparent(ctx.trace_id, ctx.span_id, ctx.trace_flags.sampled)


@contextlib.contextmanager
def carried(traceparent: str) -> Iterator[None]:
    """In a worker process, around a job: the submitter's span context is current."""
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        yield
        return
    trace_id, span_id, sampled = parsed
    ctx = SpanContext(trace_id, span_id, True, SAMPLED if sampled else NOT_SAMPLED)
    set_trace_ids(current_ids)  # this process's log lines: its logging was configured apart
    token = attach(set_span(NonRecordingSpan(ctx), EMPTY))
    try:
        yield
    finally:
        deactivate(token)
