"""The export queue: finished spans wait here for one exporting thread, so a collector never
reaches the event loop.

It plays the SDK's ``BatchSpanProcessor``'s part, with its ``OTEL_BSP_*``
variables and defaults: a bounded queue, one daemon thread that exports
batches of up to ``max_export_batch_size`` every ``schedule_delay``, or at
once when a batch is full. It is written here for what the SDK's cannot do:

* count: spans dropped because the queue was full, and exports that failed,
  for ``/metrics`` (the SDK counts them only into its own OpenTelemetry
  metrics, off by default, and logs a warning per dropped span);
* log a failing collector at most once a minute, with the exporter's own
  reason (its log records are caught here instead of each becoming a line);
* take spans a batch at a time (the request spans come in batches,
  ``service.runtime.http.records``);
* shut down within a bound without blocking the loop (the SDK's joins its thread).

The exporter runs only in the thread: a collector that hangs holds that
thread for the exporter's timeout (``OTEL_EXPORTER_OTLP_TIMEOUT``), the
queue fills, and new spans are dropped and counted; requests never wait.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from service.runtime.log import get_logger

log = get_logger("service.tracing")

# A failing export is logged at most this often.
LOG_EVERY = 60.0
# The loggers of the OpenTelemetry exporters (OTLP over HTTP and gRPC).
EXPORTER_LOGGER = "opentelemetry.exporter"


class _LastMessage(logging.Handler):
    """Keeps the exporter's last warning or error, for the once-a-minute line."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.message: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()[:300]


class ExportQueue(SpanProcessor):
    """Spans waiting for export, and the thread that exports them."""

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue: int = 2048,
        batch_size: int = 512,
        schedule_delay: float = 5.0,
    ) -> None:
        self.exporter = exporter
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.schedule_delay = schedule_delay
        self._spans: deque[ReadableSpan] = deque()
        self._wake = threading.Event()
        self._flushed = threading.Condition()
        self._flush_asked = self._flush_done = 0
        self._drop_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tracing-export", daemon=True)
        # Counts: dropped is written by whichever thread submits, under _drop_lock;
        # the others only by the exporting thread. The metrics read them on the loop.
        self.dropped = 0
        self.exported = 0
        self.failures = 0
        self._failures_logged = 0
        self._last_log = -LOG_EVERY
        self._reasons = _LastMessage()

    # -- the producers' side (the loop, or any thread that ends an SDK span) -------
    def submit(self, spans: Sequence[ReadableSpan]) -> None:
        """Queue ``spans``; what does not fit is dropped and counted."""
        queue = self._spans
        room = self.max_queue - len(queue)
        if self._closed:
            room = 0
        if len(spans) > room:
            with self._drop_lock:
                self.dropped += len(spans) - max(room, 0)
            spans = spans[: max(room, 0)]
        queue.extend(spans)
        if len(queue) >= self.batch_size:
            self._wake.set()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self.submit((span,))

    def __len__(self) -> int:
        return len(self._spans)

    # -- the exporting thread -----------------------------------------------------------
    def start(self) -> None:
        exporter_log = logging.getLogger(EXPORTER_LOGGER)
        exporter_log.addHandler(self._reasons)
        exporter_log.propagate = False
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.schedule_delay)
            self._wake.clear()
            stopping = self._closed
            with self._flushed:
                asked = self._flush_asked
            self._export_queued()
            with self._flushed:
                self._flush_done = asked
                self._flushed.notify_all()
            if stopping:
                break
        try:
            self.exporter.shutdown()
        except Exception:
            log.exception("span exporter failed to shut down")

    def _export_queued(self) -> None:
        queue = self._spans
        while queue:
            batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
            try:
                ok = self.exporter.export(batch) is SpanExportResult.SUCCESS
                reason = None
            except Exception as exc:  # an exporter bug must not end the thread
                ok, reason = False, f"{type(exc).__name__}: {exc}"
            if ok:
                self.exported += len(batch)
            else:
                self.failures += 1
                self._report(len(batch), reason)

    def _report(self, spans: int, reason: str | None) -> None:
        now = time.monotonic()
        if now - self._last_log < LOG_EVERY:
            return
        self._last_log = now
        log.warning(
            "span export failed",
            spans=spans,
            failures=self.failures - self._failures_logged,
            reason=reason or self._reasons.message,
            every_seconds=LOG_EVERY,
        )
        self._failures_logged = self.failures

    # -- flush and shutdown ----------------------------------------------------------
    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export everything queued now (blocking; tests, never the loop)."""
        if not self._thread.is_alive():
            return False
        deadline = time.monotonic() + timeout_millis / 1000
        with self._flushed:
            self._flush_asked += 1
            asked = self._flush_asked
            self._wake.set()
            while self._flush_done < asked:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._flushed.wait(remaining):
                    return self._flush_done >= asked
        return True

    def shutdown(self) -> None:
        """Stop taking spans; the thread exports what is queued, then ends (see :meth:`close`)."""
        self._closed = True
        self._wake.set()

    async def close(self, timeout: float) -> int:
        """Shut down and wait up to ``timeout`` for the last export; the spans left behind."""
        self.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Polled (only at shutdown) so the loop never blocks on the thread.
        while self._thread.is_alive() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        exporter_log = logging.getLogger(EXPORTER_LOGGER)
        exporter_log.removeHandler(self._reasons)
        exporter_log.propagate = True
        return len(self._spans)
