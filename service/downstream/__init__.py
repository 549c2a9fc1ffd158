"""Calls to other services: sessions, deadlines, retries, breaker, bulkhead, cache.

* :mod:`.client`: one downstream's resilient JSON client (the runtime part);
* :mod:`.deadline`, :mod:`.retry`, :mod:`.breaker`, :mod:`.bulkhead`,
  :mod:`.cache`: one small resilience piece each;
* :mod:`.services`: the demo's ``users`` and ``orders`` (replace these);
* :mod:`.errors`: why a call failed (the summary route maps these in one place).

Nothing here may leak a task when its caller is cancelled: every task it
starts is owned (single-flight lookups are awaited on close).
"""

from __future__ import annotations

from typing import Any, Protocol

from service.downstream.deadline import DEADLINE_HEADER, Deadline
from service.downstream.errors import (
    BadResponse,
    BulkheadFull,
    CircuitOpen,
    DownstreamError,
    DownstreamNotFound,
    DownstreamTimeout,
    DownstreamUnavailable,
)
from service.downstream.services import Downstreams, OrdersClient, UsersClient, open_downstreams


class UserLookup(Protocol):
    """What the pipeline's enrichment needs: a user by id, ``None`` when there is none.

    Failures (downstream down, breaker open, timeout) raise :class:`DownstreamError`.
    """

    async def get_user(self, user_id: str) -> dict[str, Any] | None: ...


__all__ = [
    "DEADLINE_HEADER",
    "BadResponse",
    "BulkheadFull",
    "CircuitOpen",
    "Deadline",
    "DownstreamError",
    "DownstreamNotFound",
    "DownstreamTimeout",
    "DownstreamUnavailable",
    "Downstreams",
    "OrdersClient",
    "UserLookup",
    "UsersClient",
    "open_downstreams",
]
