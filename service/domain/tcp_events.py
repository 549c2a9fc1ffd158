"""The demo's TCP protocol: a JSON event per line, answered ``OK <event_id>`` or ``ERR``.

A line handler for the runtime's TCP server (``service.runtime.tcp``): it
parses the line with the event schema and offers the event to the pipeline.
When the pipeline has no room the answer waits (the connection stops
reading) for up to ``tcp.overload_timeout``; ``ERR overloaded`` after that.
Lines that are not JSON for a framing reason (empty, a NUL byte, invalid
UTF-8) are ``invalid_json`` with a detail that says which.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from service.domain.events import Event, EventError, parse_line
from service.runtime.errors import IntakeFull
from service.runtime.tcp import Answer
from service.runtime.tcp.answers import error_line


class EventIntake(Protocol):
    """Where accepted events go (the pipeline); both return the id ``OK`` answers with."""

    def offer_nowait(self, event: Event) -> str: ...

    async def offer(self, event: Event, timeout: float) -> str: ...


class EventLines:
    """Each line one JSON event: ``OK <id>`` once it is in the pipeline."""

    def __init__(self, intake: EventIntake, overload_timeout: float) -> None:
        self._offer_nowait = intake.offer_nowait
        self._offer = intake.offer
        self._timeout = overload_timeout

    def handle(self, line: bytes) -> Answer:
        try:
            event = parse_line(line)
        except EventError as exc:
            return json_error(line, exc)
        try:
            event_id = self._offer_nowait(event)
        except IntakeFull:
            return self._later(event)
        return f"OK {event_id}\n".encode()

    def _later(self, event: Event) -> Callable[[], Awaitable[bytes]]:
        async def answer() -> bytes:
            return f"OK {await self._offer(event, self._timeout)}\n".encode()

        return answer


def json_error(line: bytes | bytearray, exc: EventError) -> bytes:
    """Name the common reasons a line is not JSON more clearly than the parser does."""
    if exc.code != "invalid_json":
        return error_line(exc.code, str(exc))
    if not line.strip():
        return error_line("invalid_json", "empty line")
    if b"\0" in line:
        return error_line("invalid_json", "NUL byte in line")
    try:
        line.decode()
    except UnicodeDecodeError:
        return error_line("invalid_json", "not valid UTF-8")
    return error_line("invalid_json", str(exc))
