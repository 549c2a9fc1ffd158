"""A request deadline that every downstream call of one request shares.

Each call gets what is left of it, and the downstream is told through
:data:`DEADLINE_HEADER` so it can stop working when nobody waits any more
(the same idea as gRPC's ``grpc-timeout``).
"""

from __future__ import annotations

import time

DEADLINE_HEADER = "X-Request-Deadline-Ms"


class Deadline:
    """An absolute point on the monotonic clock."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def header(self) -> str:
        """The remaining budget in whole milliseconds, for :data:`DEADLINE_HEADER`."""
        return str(int(self.remaining() * 1000))
