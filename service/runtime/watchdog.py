"""The stalled-loop watchdog: a thread that sees the event loop stop, while it is stopped.

A blocking call on the loop (a synchronous client, ``time.sleep``, a long
computation, a write to a pipe nobody reads) holds up every request, TCP
line and timer behind it, and nothing on the loop can say so while it
lasts; the loop-lag histogram (``service.runtime.monitor``) only sees it
afterwards. The watchdog is a thread: every tick it schedules a no-op on the
loop (``call_soon_threadsafe``) and notes when. If that has not run
``loop.stall_seconds`` later, the loop is stalled, and the watchdog, once
per stall:

* logs the loop thread's current stack (``sys._current_frames``), whose
  innermost frame is the blocking call, with its file and line;
* counts it (``event_loop_stalls_total``).

While it lasts, ``event_loop_stall_seconds`` says for how long (read at
scrape time by the admin listener, which answers from its own thread,
``service.runtime.admin``); when the loop runs again it logs the stall's
length. A C extension that holds the GIL for the whole stall stops this
thread too: it reports the stall when the GIL comes back.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback

from service.runtime.log import get_logger
from service.runtime.metrics import Metrics

log = get_logger("service.watchdog")

# Frames of the loop thread's stack in the stall line, innermost last.
STACK_FRAMES = 30


class Watchdog:
    """Watches ``loop`` from a thread; ``start`` and ``stop`` it on the loop's thread."""

    def __init__(self, threshold: float, metrics: Metrics) -> None:
        self.threshold = threshold
        self._tick = min(0.1, threshold / 4)
        self._stalls = metrics.loop_stalls.labels()
        self._gauge = metrics.loop_stall
        self._lock = threading.Lock()
        self._sent: float | None = None  # when the no-op not yet run was scheduled
        self._reported = False  # the current stall has been logged
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._gauge.set_function(self.stalled_for)
        self._thread = threading.Thread(target=self._run, name="loop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        self._gauge.remove_function()

    def stalled_for(self) -> float:
        """How long the current stall has lasted; 0 while the loop runs (any thread)."""
        sent = self._sent
        if sent is None:
            return 0.0
        waited = time.monotonic() - sent
        return waited if waited >= self.threshold else 0.0

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        while not self._stop.wait(self._tick):
            now = time.monotonic()
            with self._lock:
                sent = self._sent
                if sent is None:
                    self._sent = now
                elif now - sent < self.threshold or self._reported:
                    continue
                else:
                    self._reported = True
            if sent is None:
                try:
                    loop.call_soon_threadsafe(self._ran)
                except RuntimeError:  # the loop is closed
                    return
            else:
                self._stalls.value += 1
                self._report(now - sent)

    def _ran(self) -> None:
        """On the loop: it runs again."""
        with self._lock:
            sent, reported = self._sent, self._reported
            self._sent, self._reported = None, False
        if reported and sent is not None:
            log.warning(
                "event loop runs again after a stall", seconds=round(time.monotonic() - sent, 3)
            )

    def _report(self, seconds: float) -> None:
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return
        # Frames first, source lines after (reading them may let the loop thread go on).
        stack = traceback.StackSummary.extract(
            traceback.walk_stack(frame), limit=STACK_FRAMES, lookup_lines=False
        )
        del frame
        frames = list(reversed(stack))  # outermost first; the last one is blocking
        where = [f"{f.filename}:{f.lineno} in {f.name}" for f in frames]
        log.warning(
            "event loop stalled: it has run nothing for longer than loop.stall_seconds",
            seconds=round(seconds, 3),
            stall_seconds=self.threshold,
            blocking=where[-1] if where else None,
            code=frames[-1].line if frames else None,
            stack=where,
        )
