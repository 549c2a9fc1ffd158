"""The sink interface: where delivered events end up, and what a backend must promise.

The pipeline's sink writer hands a backend whole batches of encoded lines
and counts an event as *delivered* only when ``write_batch`` has returned,
so a backend must make the batch durable before returning (the file backend
writes and fsyncs; the Redis backend waits for its script's reply). A
backend never sees a half-built batch and never has to retry: when
``write_batch`` raises, it must leave no part of the batch behind (the file
backend truncates back to where the batch began), and the pipeline retries
the whole batch later. That is what makes "every acknowledged event exactly
once" hold across write errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# One delivered event: ``(id, data)``, its id and its JSON object encoded, without
# a line ending. A plain tuple, not a NamedTuple: one is built per event, and
# a NamedTuple costs several times more to build on the hot path.
SinkLine = tuple[str, bytes]


class Sink(Protocol):
    """A durable destination for batches of encoded events.

    ``backend`` names it in metrics (``sink_write_duration_seconds{backend}``).
    Use it as ``open()`` ... ``close()`` (the pipeline does); every method may
    be called from the event loop and must not block it.
    """

    backend: str

    async def open(self) -> None:
        """Connect or open the file, recovering what an earlier crash left behind."""

    async def write_batch(self, lines: Sequence[SinkLine]) -> None:
        """Store every line durably, or raise and store none of them."""

    async def flush(self) -> None:
        """A durability point for everything written so far (fsync on shutdown)."""

    async def close(self) -> None:
        """Flush and release the backend; no call may follow."""

    @property
    def healthy(self) -> bool:
        """False while the backend is failing (the last write or flush raised)."""
