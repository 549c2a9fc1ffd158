"""Calls to other services: sessions, deadlines, retries, breaker, bulkhead, cache.

* :mod:`.client`: one downstream's resilient JSON client;
* :mod:`.registry`: the clients by name, one per ``[downstream.services.<name>]``;
* :mod:`.deadline`, :mod:`.retry`, :mod:`.breaker`, :mod:`.bulkhead`,
  :mod:`.cache`: one small resilience piece each;
* :mod:`.errors`: why a call failed (a route maps these to statuses in one place).

Nothing here may leak a task when its caller is cancelled: every task it
starts is owned (single-flight lookups are awaited on close).
"""

from service.runtime.downstream.client import DownstreamClient, ensure
from service.runtime.downstream.deadline import DEADLINE_HEADER, Deadline
from service.runtime.downstream.errors import (
    BadResponse,
    BulkheadFull,
    CircuitOpen,
    DownstreamError,
    DownstreamNotFound,
    DownstreamTimeout,
    DownstreamUnavailable,
)
from service.runtime.downstream.registry import Downstreams, open_downstreams

__all__ = [
    "DEADLINE_HEADER",
    "BadResponse",
    "BulkheadFull",
    "CircuitOpen",
    "Deadline",
    "DownstreamClient",
    "DownstreamError",
    "DownstreamNotFound",
    "DownstreamTimeout",
    "DownstreamUnavailable",
    "Downstreams",
    "ensure",
    "open_downstreams",
]
