"""A downstream call as a client span, with tracing on (``DownstreamClient.tracing``).

The call's span is current while its attempts run, so each attempt's span
(``DownstreamClient.attempt``) is its child, and refusals by the breaker or
the bulkhead are events on it. ``downstream.outcome`` says how the call
ended, in the words of ``downstream_requests_total`` (plus ``not_found``, a
healthy answer that the metric counts as ``ok``); a call its caller
cancelled (the summary's sibling 404, a client gone) is ``cancelled``, not
an error of the downstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from service.runtime.downstream.errors import (
    DownstreamError,
    DownstreamNotFound,
    DownstreamTimeout,
    DownstreamUnavailable,
)

if TYPE_CHECKING:
    from service.runtime.tracing.core import Tracing

T = TypeVar("T")


async def traced_call(
    tracing: Tracing, service: str, method: str, url: str, call: Callable[[], Awaitable[T]]
) -> T:
    """``await call()`` in the span of a call to ``service``."""
    span = tracing.client_span(
        f"{method} {service}",
        {"downstream.service": service, "http.request.method": method, "url.full": url},
    )
    token = tracing.activate(span, fresh=False)
    outcome = "error"
    try:
        result = await call()
        outcome = "ok"
        return result
    except asyncio.CancelledError:
        outcome = "cancelled"
        span.add_event("cancelled")
        raise
    except DownstreamNotFound:
        outcome = "not_found"
        raise
    except DownstreamError as exc:
        outcome = outcome_of(exc)
        if outcome != "rejected":
            tracing.fail(span, str(exc))
        raise
    except Exception as exc:
        span.record_exception(exc)
        tracing.fail(span, type(exc).__name__)
        raise
    finally:
        tracing.deactivate(token)
        span.set_attribute("downstream.outcome", outcome)
        span.end()


def outcome_of(exc: DownstreamError) -> str:
    """A failed call's ``downstream.outcome``, as ``downstream_requests_total`` counts it."""
    if isinstance(exc, DownstreamUnavailable):
        return "rejected"
    if isinstance(exc, DownstreamTimeout):
        return "timeout"
    return "error"
