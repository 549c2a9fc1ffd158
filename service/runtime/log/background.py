"""The log writer thread: chunks of lines written off the loop, dropped rather than waited for.

A write to stdout blocks for as long as its reader does not read: a stuck
log shipper, Docker's "blocking" log mode behind a slow driver, a paused
terminal. The loop must never wait for that, so :class:`BackgroundWriter`
takes whole chunks (many lines joined, one item per flush) into a buffer of
at most ``limit`` bytes and one thread writes them out. When the buffer is
full a chunk is dropped at once; its lines are counted (:attr:`dropped`),
and one line saying how many were lost is written in their place, when
writing resumes.

The thread writes to the stream's file descriptor, not through its Python
buffer: a thread blocked inside ``sys.stdout.buffer.write`` holds that
buffer's lock, and the interpreter aborts at exit when it cannot take it
("could not acquire lock ... at interpreter shutdown, possibly due to daemon
threads", python/cpython#86883). So the thread is a daemon that can be left
behind, blocked, at exit.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import IO


class _Gap:
    """Where dropped chunks would have been, and how many lines they held."""

    __slots__ = ("lines",)

    def __init__(self, lines: int) -> None:
        self.lines = lines


def raw_writer(stream: IO[bytes]) -> Callable[[bytes], None]:
    """A function writing all of its bytes to ``stream``'s descriptor (or to the stream itself)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # in-memory streams (tests)
        fd = -1
    if fd < 0:

        def write_stream(data: bytes) -> None:
            stream.write(data)
            stream.flush()

        return write_stream
    with contextlib.suppress(OSError, ValueError):
        stream.flush()  # what the Python buffer holds goes first

    def write_fd(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    return write_fd


class BackgroundWriter:
    """A thread writing chunks to ``stream`` through a buffer of at most ``limit`` bytes."""

    def __init__(self, stream: IO[bytes], limit: int, describe_gap: Callable[[int], bytes]) -> None:
        self._write = raw_writer(stream)
        self._limit = limit
        self._describe_gap = describe_gap
        self._items: deque[bytes | _Gap] = deque()
        self._bytes = 0  # buffered, including the chunk being written
        self._cond = threading.Condition(threading.Lock())
        self._closing = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def put(self, chunk: bytes) -> None:
        """Queue ``chunk`` (whole lines, each ending in a newline); never blocks."""
        with self._cond:
            # A chunk larger than the whole buffer still goes out when nothing waits.
            if self._bytes and self._bytes + len(chunk) > self._limit:
                lines = chunk.count(b"\n")
                self.dropped += lines
                last = self._items[-1] if self._items else None
                if isinstance(last, _Gap):
                    last.lines += lines
                else:
                    self._items.append(_Gap(lines))
                return
            self._items.append(chunk)
            self._bytes += len(chunk)
            self._cond.notify()

    def close(self, timeout: float) -> bool:
        """Write what is buffered within ``timeout``; True if the thread has ended."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closing:
                    self._cond.wait()
                if not self._items:
                    return
                item = self._items.popleft()
            if isinstance(item, _Gap):
                data, size = self._describe_gap(item.lines), 0
            else:
                data, size = item, len(item)
            # A closed stdout (e.g. a broken pipe at exit): nothing useful left to do.
            with contextlib.suppress(OSError, ValueError):
                self._write(data)
            if size:
                with self._cond:
                    self._bytes -= size
