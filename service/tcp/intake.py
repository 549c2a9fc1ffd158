"""What the TCP server needs from the pipeline: the :class:`Intake` protocol.

The server knows nothing of queues or workers (ARCHITECTURE.md: ``tcp`` must
not know pipeline internals). It hands each valid event to an intake and gets
the event's id back, or learns that there is no room (``IntakeFull``) or that
the service is draining (``IntakeClosed``). :class:`LocalIntake` is the
stand-in used until the pipeline provides a real intake (issue 3 says an
event may be answered without being queued until then).
"""

from __future__ import annotations

import itertools
import os
from typing import Protocol

from service.events import Event


class Intake(Protocol):
    """Where acknowledged events go; implemented by the pipeline.

    Both methods return the id that the client gets in ``OK <id>`` and that
    the sink line of the event carries.
    """

    def offer_nowait(self, event: Event) -> str:
        """Take ``event`` now or raise ``IntakeFull`` (no room) / ``IntakeClosed`` (draining)."""
        ...

    async def offer(self, event: Event, timeout: float) -> str:
        """Wait up to ``timeout`` seconds for room.

        Raises ``IntakeFull`` when the time runs out and ``IntakeClosed`` when
        the pipeline starts draining meanwhile. Cancellation must leave the
        event not taken.
        """
        ...


class LocalIntake:
    """Accepts every event at once and keeps none: ids only, never full.

    The default until the pipeline lands; tests use it where the pipeline is
    not the point.
    """

    def __init__(self) -> None:
        # A per-process prefix keeps ids unique across restarts without a clock.
        self._prefix = os.urandom(4).hex()
        self._counter = itertools.count(1)

    def offer_nowait(self, event: Event) -> str:
        return f"{self._prefix}-{next(self._counter):x}"

    async def offer(self, event: Event, timeout: float) -> str:
        return self.offer_nowait(event)
