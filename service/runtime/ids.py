"""Unique, cheap ids: a per-process prefix and a counter, made ahead in batches.

Formatting an id costs more than taking one from a list, so :class:`IdSequence`
makes them a batch at a time and hands one out per ``pop``. The prefix keeps
ids of a restarted process (or of another replica) from colliding with these.
"""

from __future__ import annotations

import os
import time


def process_prefix(random_bytes: int = 6, with_time: bool = False) -> str:
    """Random hex and a dash; ``with_time`` puts the start second first (ids sort by time)."""
    return (f"{int(time.time()):08x}" if with_time else "") + os.urandom(random_bytes).hex() + "-"


class IdSequence:
    """``<prefix><hex counter>`` ids in order; ``new()`` for one, ``many(n)`` for a batch."""

    BATCH = 1024

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = process_prefix() if prefix is None else prefix
        self._next = 1
        self._ahead: list[str] = []  # made in reverse, so that pop() hands them out in order
        # The cheapest way to take an id made ahead (IndexError when none is left).
        self.pop = self._ahead.pop

    def new(self) -> str:
        try:
            return self._ahead.pop()
        except IndexError:
            self._ahead[:] = self.many(self.BATCH)[::-1]
            return self._ahead.pop()

    def many(self, count: int) -> list[str]:
        """``count`` new ids at once (an HTTP batch): one call, not one per id."""
        first = self._next
        self._next = first + count
        prefix = self.prefix
        return [prefix + hex(n)[2:] for n in range(first, first + count)]

    def top_up(self) -> None:
        """Make the next batch now (off the request path) when fewer than half are left."""
        if len(self._ahead) < self.BATCH // 2:
            self._ahead[:0] = self.many(self.BATCH - len(self._ahead))[::-1]
