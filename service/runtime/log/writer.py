"""The log writer: one buffered, thread-safe line sink in front of stdout.

Writing is the expensive part of a log line (a syscall per line costs more
than rendering it), so lines are appended to a buffer that is written at
most every ``log.flush_interval`` seconds, at once for warnings and errors,
and at exit. Producers that keep raw records and render them in batches
(the HTTP access lines) register a flush hook and render at each flush.

While the service runs (:func:`flushing`), a flush hands its joined chunk to
a writer thread (:mod:`.background`) instead of writing it: a stdout whose
reader stops reading must not stop the loop. What does not fit in
``log.buffer_bytes`` is dropped, counted (:attr:`LogSink.dropped`, exported
as ``<namespace>_log_dropped_total``) and reported by one line once writing
resumes; at the end the thread gets ``log.exit_flush_seconds`` to write
what is left. Outside the service (the CLI's other commands, most tests)
lines are written directly.

This module knows nothing of structlog or of HTTP.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from typing import IO, Any, NoReturn

import orjson

from service.runtime.log.background import BackgroundWriter
from service.runtime.log.timestamps import clock

# Defaults of ``log.buffer_bytes`` and ``log.exit_flush_seconds`` (the settings repeat them).
BUFFER_BYTES = 1024 * 1024
EXIT_FLUSH_SECONDS = 1.0


class LogSink:
    """A buffered, thread-safe line writer in front of one binary stream.

    While ``buffering``, lines wait for the next ``flush`` (the service calls it
    every ``log.flush_interval``), except warnings and errors. The thread that
    switched buffering on (the event loop's) also runs the flush hooks at each
    of its flushes: producers that keep raw per-request records and render
    them in batches (the HTTP access lines), so a request pays for a tuple
    instead of a rendered line.
    Between :meth:`start_writer` and :meth:`stop_writer` a thread does the
    writing, and nothing here ever waits for the stream.
    ``max_pending`` tells such a producer how many records it may hold for the
    next flush: 0 while unbuffered, so it writes at once. Flushes from other
    threads (an urgent error) leave the hooks to the owner's next flush.
    """

    MAX_PENDING = 8192

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lines: list[bytes] = []
        self._lock = threading.Lock()
        self._buffering = False
        self._owner: int | None = None
        self._hooks: list[weakref.WeakMethod[Callable[[], None]]] = []
        self.max_pending = 0
        self._writer: BackgroundWriter | None = None
        self._dropped_before = 0
        self.console = False  # how the "lines dropped" line is rendered (set by configure)
        # When several processes share the stream (a pipe), write at most this
        # many bytes at a time, cut at line ends; 0: everything in one write.
        self.max_write = 0

    @property
    def dropped(self) -> int:
        """Lines lost so far because the output did not keep up (the buffer was full)."""
        writer = self._writer
        return self._dropped_before + (writer.dropped if writer is not None else 0)

    def start_writer(self, buffer_bytes: int = BUFFER_BYTES) -> None:
        """From now on a thread writes, through a buffer of ``buffer_bytes``."""
        if self._writer is None:
            self.flush()
            self._writer = BackgroundWriter(self._stream, buffer_bytes, self._gap_line)

    def stop_writer(self, timeout: float = EXIT_FLUSH_SECONDS) -> bool:
        """Let the thread write what is pending within ``timeout``, then write directly again.

        False if the stream did not take it in time: the thread is left
        blocked (a daemon) and lines keep going to its full buffer, dropped.
        """
        writer = self._writer
        if writer is None:
            return True
        self.flush()
        if not writer.close(timeout):
            return False
        self._writer = None
        self._dropped_before += writer.dropped
        return True

    def _gap_line(self, lines: int) -> bytes:
        event = "log lines dropped: the output did not keep up"
        if self.console:
            return f"{clock.now()} [warning  ] {event} [service.log] dropped={lines}\n".encode()
        line = {
            "event": event,
            "logger": "service.log",
            "level": "warning",
            "timestamp": clock.now(),
            "dropped": lines,
        }
        return orjson.dumps(line) + b"\n"

    @property
    def buffering(self) -> bool:
        return self._buffering

    @buffering.setter
    def buffering(self, on: bool) -> None:
        if not on:
            self._run_hooks()
        self._buffering = on
        self._owner = threading.get_ident() if on else None
        self.max_pending = self.MAX_PENDING if on else 0

    def add_flush_hook(self, hook: Callable[[], None]) -> None:
        """Run the bound method ``hook`` at the owner's flushes, for as long as its object lives."""
        self._hooks = [ref for ref in self._hooks if ref() is not None]
        self._hooks.append(weakref.WeakMethod(hook))

    def reset(self, stream: IO[bytes]) -> None:
        """Write what is pending, then write to ``stream``, unbuffered (``configure``)."""
        self.buffering = False
        self.stop_writer()
        self.flush()
        self._stream = stream

    def write_line(self, line: bytes, *, urgent: bool = False) -> None:
        with self._lock:
            self._lines.append(line)
        if urgent or not self._buffering:
            self.flush()

    def _run_hooks(self) -> None:
        if self._owner is not None and threading.get_ident() == self._owner:
            for ref in self._hooks:
                hook = ref()
                if hook is not None:
                    hook()

    def flush(self) -> None:
        self._run_hooks()
        with self._lock:
            if not self._lines:
                return
            data = b"\n".join(self._lines) + b"\n"
            self._lines.clear()
            pieces: Sequence[bytes | memoryview] = (
                line_chunks(data, self.max_write)
                if self.max_write and len(data) > self.max_write
                else (data,)
            )
            writer = self._writer
            if writer is not None:
                # Never blocks; under the lock, pieces keep their order.
                for piece in pieces:
                    writer.put(bytes(piece))  # the whole: the same object, not a copy
                return
        try:
            for piece in pieces:
                self._stream.write(piece)
                self._stream.flush()
        except (OSError, ValueError):
            pass  # stdout closed (e.g. a broken pipe at exit): nothing useful left to do


def line_chunks(data: bytes, limit: int) -> list[memoryview]:
    """``data`` (whole lines) in pieces of at most ``limit`` bytes that end at a line end.

    A single line longer than ``limit`` is a piece of its own.
    """
    view, chunks, start, end = memoryview(data), [], 0, len(data)
    while start < end:
        stop = start + limit
        if stop < end:
            cut = data.rfind(b"\n", start, stop)
            stop = cut + 1 if cut >= start else (data.find(b"\n", stop) + 1 or end)
        chunks.append(view[start:stop])
        start = stop
    return chunks


_sink = LogSink(sys.stdout.buffer)


def sink() -> LogSink:
    return _sink


def exit_at_once(code: int, flush_seconds: float) -> NoReturn:
    """Exit the process now, without cleanup (a second signal): the writer thread
    gets at most ``flush_seconds`` (0.5 s at most) for the lines still pending,
    the last of which is usually why the process is going."""
    sink().stop_writer(min(0.5, flush_seconds))
    os._exit(code)


async def flushing(
    coro: Coroutine[Any, Any, int],
    interval: float,
    buffer_bytes: int = BUFFER_BYTES,
    exit_seconds: float = EXIT_FLUSH_SECONDS,
) -> int:
    """Run ``coro`` with the sink's writer thread, buffering, flushed every ``interval`` seconds.

    At the end the thread has ``exit_seconds`` to write what is left.
    """
    out = sink()
    out.start_writer(buffer_bytes)
    try:
        if interval <= 0:
            return await coro
        return await _buffered(coro, interval)
    finally:
        out.stop_writer(exit_seconds)


async def _buffered(coro: Coroutine[Any, Any, int], interval: float) -> int:
    out = sink()

    async def flusher() -> None:
        while True:
            await asyncio.sleep(interval)
            out.flush()

    task = asyncio.create_task(flusher(), name="lifecycle:log-flush")
    out.buffering = True
    try:
        return await coro
    finally:
        out.buffering = False
        task.cancel()
        out.flush()
