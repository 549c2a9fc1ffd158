"""The file sink: JSON lines appended to one file, fsynced on every batch boundary.

Blocking file I/O runs in a thread (the given executor, or the loop's default
one through ``asyncio.to_thread``), one call at a time under a lock, so a
write still running in its thread when the writer task is cancelled can
never interleave with ``close``.

A crash can leave a torn last line (a partial ``write``, or a power loss
before the page cache reached the disk). :func:`set_aside_torn_tail` finds
it at start-up, moves the torn bytes to a side file next to the sink, logs
it, and truncates the sink to its last complete line, so new lines are never
appended to a fragment.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import TypeVar

from service.runtime.log import get_logger
from service.runtime.pipeline.sinks.base import SinkLine

log = get_logger("service.sinks")

T = TypeVar("T")

_TAIL_CHUNK = 64 * 1024


class FileSink:
    """JSON lines appended to one file, fsynced on every batch boundary."""

    backend = "file"

    def __init__(self, path: Path, executor: Executor | None = None) -> None:
        self.path = path
        self._executor = executor
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._healthy = True
        self.set_aside = 0  # torn bytes moved out of the way at open

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            return await asyncio.to_thread(fn)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def open(self) -> None:
        await self._run(self._open)

    async def write_batch(self, lines: Sequence[SinkLine]) -> None:
        try:
            await self._run(functools.partial(self._write, lines))
        except Exception:
            self._healthy = False
            raise
        self._healthy = True

    async def flush(self) -> None:
        await self._run(self._sync)

    async def close(self) -> None:
        await self._run(self._close)

    # -- in the thread -------------------------------------------------------
    def _open(self) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.set_aside = set_aside_torn_tail(self.path)
            created = not self.path.exists()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._fd).st_size
            if created:
                # A new file's directory entry must survive a crash too.
                _fsync_dir(self.path.parent)

    def _write(self, lines: Sequence[SinkLine]) -> None:
        data = b"\n".join([line for _, line in lines]) + b"\n"
        with self._lock:
            fd = self._require_fd()
            start = self._size
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            except BaseException:
                # Leave nothing of this batch behind: the pipeline retries it whole.
                # (After a failed fsync the page cache is suspect too, so the
                # bytes are rewritten rather than trusted.)
                os.ftruncate(fd, start)
                raise
            self._size = start + len(data)

    def _sync(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)

    def _close(self) -> None:
        with self._lock:
            if self._fd is None:
                return
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _require_fd(self) -> int:
        if self._fd is None:
            raise RuntimeError(f"sink {self.path} is not open")
        return self._fd


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def set_aside_torn_tail(path: Path) -> int:
    """Move bytes after the last newline of ``path`` to a side file; return their count.

    Only the tail can be torn: the file is append-only and written one whole
    batch at a time. The side file (``<name>.torn-<unix time>``) keeps the
    bytes for a human to look at; the sink itself ends with a complete line.
    """
    try:
        fh = path.open("r+b")
    except FileNotFoundError:
        return 0
    with fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        keep, pos = 0, size
        while pos > 0:
            start = max(0, pos - _TAIL_CHUNK)
            fh.seek(start)
            found = fh.read(pos - start).rfind(b"\n")
            if found >= 0:
                keep = start + found + 1
                break
            pos = start
        fh.seek(keep)
        torn = fh.read()
        side = path.with_name(f"{path.name}.torn-{time.time_ns()}")
        with side.open("xb") as out:
            out.write(torn)
            out.flush()
            os.fsync(out.fileno())
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(path.parent)
    log.warning(
        "sink had a torn last line: set aside",
        path=str(path),
        bytes=len(torn),
        kept_bytes=keep,
        side_file=str(side),
    )
    return len(torn)
