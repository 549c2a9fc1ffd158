"""Enrichment, the demo's pipeline stage: who is the user behind an event.

:class:`EnrichStage` looks each event's user up through a
:class:`UserLookup` and hands on ``(event, user, outcome)``;
:func:`encode_record` turns that into the sink line. The production lookup
is the ``users`` downstream client (TTL cache, single-flight, deadlines,
breaker); :class:`LocalUsers` is an in-process stand-in with a deterministic
dataset for tests and for running without the downstream.

A lookup owns its deadlines: the stage awaits it as it is, and an error from
it never loses the event (the event is written unenriched, marked "failed").
While the lookup says it is refusing calls (the users circuit is open), a
batch skips its lookups at once: one check per batch, cached users still
enriched, the rest marked "failed" without an exception each. A dependency
that is down must not make ingest slower: that is when it is needed most.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping
from typing import Any, Literal, Protocol, TypeVar

import orjson

from service.domain.events import Event
from service.runtime.log import get_logger
from service.runtime.metrics import Metrics
from service.runtime.pipeline import Stage

__all__ = ["EnrichStage", "Enriched", "Enrichment", "LocalUsers", "UserLookup", "encode_record"]

log = get_logger("service.pipeline")

# How an event's enrichment went; written into every sink line as "enrichment".
Enrichment = Literal["ok", "unknown_user", "failed", "skipped"]
_ENRICHMENTS: tuple[Enrichment, ...] = ("ok", "unknown_user", "failed", "skipped")
# What the stage hands on: the event, its user's record (or None), how it went.
Enriched = tuple[Event, "dict[str, Any] | None", Enrichment]
_NOT_LOOKED_UP: dict[str, Any] = {}  # a marker (identity), never a user
T = TypeVar("T")


class UserLookup(Protocol):
    """A user's record by id, ``None`` when there is no such user; raises when the lookup fails."""

    async def get_user(self, user_id: str) -> dict[str, Any] | None: ...

    def refusing(self) -> bool:
        """True while ``get_user`` would fail at once for any user not cached (circuit open)."""
        ...

    def cached(self, user_id: str, default: T) -> dict[str, Any] | T | None:
        """What ``get_user`` would answer without a call, or ``default``."""
        ...


class EnrichStage(Stage):
    """Adds each event's user record; a failed lookup marks the event instead of losing it."""

    name = "enrich"

    def __init__(self, users: UserLookup, metrics: Metrics) -> None:
        self._lookup = users.get_user
        self._refusing = users.refusing
        self._cached = users.cached
        events = metrics.pipeline_events
        self._outcomes = {e: events.labels(self.name, e) for e in _ENRICHMENTS}
        self._last_error = 0.0

    async def process(self, values: list[Event]) -> list[Enriched]:
        if self._refusing():  # one check per batch
            return self._without_lookups(values)
        lookup, outcomes = self._lookup, self._outcomes
        # One lookup per user per batch: users repeat, and even a cache hit
        # costs a coroutine per call.
        found: dict[str, dict[str, Any] | None] = {}
        out: list[Enriched] = []
        append = out.append
        ok = 0  # the common outcome is counted once per batch, the others as they come
        for event in values:
            if self.bypassing:  # a slow shutdown drain: the rest goes unenriched
                append((event, None, "skipped"))
                outcomes["skipped"].value += 1
                continue
            user_id = event["user_id"]
            user = found.get(user_id, _NOT_LOOKED_UP)
            outcome: Enrichment
            try:
                if user is _NOT_LOOKED_UP:
                    user = found[user_id] = await lookup(user_id)
                outcome = "ok" if user is not None else "unknown_user"
            except Exception as exc:  # CancelledError is not an Exception
                user, outcome = None, "failed"
                self._failed(exc)
            if outcome == "ok":
                ok += 1
            else:
                outcomes[outcome].value += 1
            append((event, user, outcome))
            if outcome == "failed" and self._refusing():
                # The circuit opened during this batch: the rest skips its lookups.
                out.extend(self._without_lookups(values[len(out) :]))
                break
        outcomes["ok"].value += ok
        return out

    def _without_lookups(self, values: list[Event]) -> list[Enriched]:
        """Cached users only, no call: the rest goes on unenriched, marked "failed"."""
        cached, outcomes = self._cached, self._outcomes
        out: list[Enriched] = []
        append = out.append
        counts = dict.fromkeys(_ENRICHMENTS, 0)
        for event in values:
            user = cached(event["user_id"], _NOT_LOOKED_UP)
            outcome: Enrichment
            if user is _NOT_LOOKED_UP:
                user, outcome = None, "failed"
            else:
                outcome = "ok" if user is not None else "unknown_user"
            counts[outcome] += 1
            append((event, user, outcome))
        for outcome, count in counts.items():
            if count:
                outcomes[outcome].value += count
        if counts["failed"]:
            self._failed("the users service refuses calls (circuit open): lookups skipped")
        return out

    def bypass(self, values: list[Event]) -> list[Enriched]:
        """A slow drain writes the rest unenriched, marked "skipped"."""
        self._outcomes["skipped"].value += len(values)
        return [(event, None, "skipped") for event in values]

    def _failed(self, error: Exception | str) -> None:
        # At most one line a second: a downstream outage must not flood the log
        # (and the text is made only for the line that is written).
        now = time.monotonic()
        if now - self._last_error >= 1.0:
            self._last_error = now
            if isinstance(error, Exception):
                error = f"{type(error).__name__}: {error}"
            log.warning("user lookup failed: writing events unenriched", error=error)


def encode_record(event_id: str, enriched: Enriched, received_at: float) -> bytes:
    """One sink line (without its newline): the event, its id, and what enrichment found.

    A user record that is not JSON is left out (the line says "failed").
    """
    event, user, outcome = enriched
    try:
        return orjson.dumps(
            {
                "id": event_id,
                "received_at": received_at,
                **event,
                "user": user,
                "enrichment": outcome,
            }
        )
    except TypeError:  # orjson.JSONEncodeError: the user record is not JSON
        return orjson.dumps(
            {
                "id": event_id,
                "received_at": received_at,
                **event,
                "user": None,
                "enrichment": "failed",
            }
        )


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
        return self._user(user_id)

    def refusing(self) -> bool:
        return False  # in memory: never down

    def cached(self, user_id: str, default: T) -> dict[str, Any] | T | None:
        return self._user(user_id)

    def _user(self, user_id: str) -> dict[str, Any] | None:
        if self._users is not None:
            return self._users.get(user_id)
        user = self._generated.get(user_id)
        if user is None:
            if len(self._generated) >= self.MAX_GENERATED:
                self._generated.clear()
            tier = _TIERS[zlib.crc32(user_id.encode()) % len(_TIERS)]
            user = self._generated[user_id] = {
                "id": user_id,
                "name": f"user {user_id}",
                "tier": tier,
            }
        return user


_TIERS = ("free", "pro", "enterprise")
