"""Enrichment, the demo part of the pipeline: who is the user behind an event.

The pipeline depends only on :class:`UserLookup`. The production lookup is
the ``users`` downstream client (TTL cache, single-flight, deadlines,
breaker: ``service.downstream``); :class:`LocalUsers` is an in-process
stand-in with a deterministic dataset for tests and for running without the
downstream. Replace this module (and the record layout of :func:`encode_record`) when
adapting the template to another domain.

A lookup owns its deadlines: the pipeline awaits it as it is, and an error
from it never loses the event (the event is written unenriched, marked).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, Literal, Protocol

import orjson

from service.events import Event

__all__ = ["Enrichment", "LocalUsers", "UserLookup", "encode_record"]

# How an event's enrichment went; written into every sink line as "enrichment".
Enrichment = Literal["ok", "unknown_user", "failed", "skipped"]


class UserLookup(Protocol):
    """A user's record by id, ``None`` when there is no such user; raises when the lookup fails.

    The same interface as ``service.downstream.UserLookup`` (the users client
    implements it), restated here so the pipeline does not import the clients.
    """

    async def get_user(self, user_id: str) -> dict[str, Any] | None: ...


class LocalUsers:
    """A :class:`UserLookup` over an in-memory dataset (never suspends: a cache hit).

    Without ``users``, every id is a known user with a deterministic record,
    the same shape the ``users`` stub answers.
    """

    # Generated records are kept (like the real client's cache) up to this many.
    MAX_GENERATED = 10_000

    def __init__(self, users: Mapping[str, dict[str, Any]] | None = None) -> None:
        self._users = users
        self._generated: dict[str, dict[str, Any]] = {}

    async def get_user(self, user_id: str) -> dict[str, Any] | None:
        if self._users is not None:
            return self._users.get(user_id)
        user = self._generated.get(user_id)
        if user is None:
            if len(self._generated) >= self.MAX_GENERATED:
                self._generated.clear()
            tier = _TIERS[zlib.crc32(user_id.encode()) % len(_TIERS)]
            user = self._generated[user_id] = {"id": user_id, "name": f"user {user_id}",
                                               "tier": tier}
        return user


_TIERS = ("free", "pro", "enterprise")


def encode_record(
    event_id: str, event: Event, received_at: float, user: dict[str, Any] | None,
    enrichment: Enrichment,
) -> bytes:
    """One sink line (without its newline): the event, its id, and what enrichment found.

    Raises ``orjson.JSONEncodeError`` when ``user`` cannot be encoded; the
    caller then writes the event without it.
    """
    return orjson.dumps({"id": event_id, "received_at": received_at, **event,
                         "user": user, "enrichment": enrichment})
