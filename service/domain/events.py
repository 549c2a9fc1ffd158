"""The event schema, shared by the HTTP API and the TCP protocol (one schema, two transports).

Pure functions, no I/O. An event is a JSON object with ``user_id`` (string,
1-64 characters), ``type`` (string, 1-64 characters), an optional
``payload`` (object, at most 16 KiB encoded) and an optional ``ts``
(number). Unknown members are refused, so a misspelt field is an error
rather than silently dropped. Every failure is an :class:`EventError` that
names the offending index (in a batch) and field.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NotRequired, TypedDict, cast

import orjson

MAX_ID_CHARS = 64
MAX_PAYLOAD_BYTES = 16 * 1024
FIELDS = frozenset(("user_id", "type", "payload", "ts"))

ErrorCode = Literal["invalid_json", "invalid_event", "too_many_events"]


class Event(TypedDict):
    user_id: str
    type: str
    payload: NotRequired[dict[str, Any]]
    ts: NotRequired[float]


class EventError(ValueError):
    """Why an input is not a valid event (or batch of events)."""

    def __init__(
        self, code: ErrorCode, detail: str, *, field: str | None = None, index: int | None = None
    ) -> None:
        self.code = code
        self.detail = detail
        self.field = field
        self.index = index
        where = ""
        if index is not None:
            where += f"[{index}]"
        if field is not None:
            where += f".{field}" if where else field
        super().__init__(f"{where}: {detail}" if where else detail)

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "detail": self.detail}


def _check_id(obj: dict[str, Any], name: str, index: int | None) -> str:
    value = obj.get(name)
    if value is None:
        raise EventError("invalid_event", "is required", field=name, index=index)
    if not isinstance(value, str):
        raise EventError("invalid_event", "must be a string", field=name, index=index)
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise EventError(
            "invalid_event", f"must be 1 to {MAX_ID_CHARS} characters", field=name, index=index
        )
    return value


# Re-encoding a decoded JSON value with orjson never makes it more than this many
# times longer than its source text: strings and integers never grow, and the
# worst case is a float written with an exponent ("1e15" is 1000000000000000.0).
# So a payload whose whole source is at most MAX_PAYLOAD_BYTES / this long is
# within the limit without being encoded to find out.
_MAX_GROWTH = 5


def validate_event(obj: object, index: int | None = None, source_bytes: int | None = None) -> Event:
    """Check one decoded JSON value and return it as an :class:`Event` (the same dict).

    ``source_bytes`` is the length of the JSON text ``obj`` was decoded from
    by orjson, when known: a short enough source needs no payload size check.
    """
    if not isinstance(obj, dict):
        raise EventError("invalid_event", "an event must be a JSON object", index=index)
    if not obj.keys() <= FIELDS:  # a subset test builds no set (this runs once per event)
        extra = obj.keys() - FIELDS
        raise EventError("invalid_event", "unknown field", field=sorted(extra)[0], index=index)
    # The common case checked inline; _check_id names the error (or takes a str subclass).
    user_id = obj.get("user_id")
    if type(user_id) is not str or not 0 < len(user_id) <= MAX_ID_CHARS:
        _check_id(obj, "user_id", index)
    kind = obj.get("type")
    if type(kind) is not str or not 0 < len(kind) <= MAX_ID_CHARS:
        _check_id(obj, "type", index)
    if len(obj) > 2:
        if "payload" in obj:
            payload = obj["payload"]
            if not isinstance(payload, dict):
                raise EventError("invalid_event", "must be an object", field="payload", index=index)
            if (source_bytes is None or source_bytes * _MAX_GROWTH > MAX_PAYLOAD_BYTES) and len(
                orjson.dumps(payload)
            ) > MAX_PAYLOAD_BYTES:
                raise EventError(
                    "invalid_event",
                    f"must be at most {MAX_PAYLOAD_BYTES} bytes encoded",
                    field="payload",
                    index=index,
                )
        if "ts" in obj:
            ts = obj["ts"]
            if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
                raise EventError(
                    "invalid_event", "must be a finite number", field="ts", index=index
                )
    # Every member is now known and checked: the dict is the event as it is.
    return cast(Event, obj)


def _loads(data: bytes | str, index: int | None = None) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # orjson also refuses invalid UTF-8 and lone surrogates here.
        raise EventError("invalid_json", f"not valid JSON: {exc.args[0]}", index=index) from None


def parse_line(line: bytes) -> Event:
    """One TCP line (without its line ending) holding one JSON event."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:  # as _loads, inline: this runs once per TCP line
        raise EventError("invalid_json", f"not valid JSON: {exc.args[0]}") from None
    return validate_event(obj, source_bytes=len(line))


def parse_json_body(body: bytes, max_events: int) -> list[Event]:
    """An ``application/json`` body: one event object or an array of them."""
    doc = _loads(body)
    size = len(body)
    if isinstance(doc, dict):
        return [validate_event(doc, source_bytes=size)]
    if not isinstance(doc, list):
        raise EventError("invalid_event", "the body must be an event object or an array of them")
    if not doc:
        raise EventError("invalid_event", "the array holds no events")
    if len(doc) > max_events:
        raise EventError("too_many_events", f"at most {max_events} events per request")
    return [validate_event(item, i, size) for i, item in enumerate(doc)]


def parse_ndjson_body(body: bytes, max_events: int) -> list[Event]:
    """An ``application/x-ndjson`` body: one JSON event per line; blank lines are skipped."""
    events: list[Event] = []
    for raw in body.split(b"\n"):
        line = raw.strip()
        if not line:
            continue
        if len(events) >= max_events:
            raise EventError("too_many_events", f"at most {max_events} events per request")
        events.append(validate_event(_loads(line, len(events)), len(events), len(line)))
    if not events:
        raise EventError("invalid_event", "the body holds no events")
    return events
