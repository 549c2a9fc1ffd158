"""Log timestamps: ISO-8601 UTC with milliseconds, made once per millisecond."""

from __future__ import annotations

import time


class Clock:
    """ISO-8601 UTC timestamps with milliseconds.

    Formatting a timestamp costs more than a cheap request's whole access
    line otherwise would, so the text is made once per millisecond (many
    requests share one under load) and the date part once per second.
    """

    __slots__ = ("_ms", "_prefix", "_second", "_text")

    def __init__(self) -> None:
        self._ms = -1
        self._second = -1
        self._prefix = ""
        self._text = ""

    def now(self) -> str:
        return self.at(time.time())

    def at(self, when: float) -> str:
        """The timestamp of ``when`` (seconds since the epoch)."""
        ms = int(when * 1000)
        if ms != self._ms:
            second, frac = divmod(ms, 1000)
            if second != self._second:
                self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
                self._second = second
            self._text = f"{self._prefix}.{frac:03d}Z"
            self._ms = ms
        return self._text


clock = Clock()
