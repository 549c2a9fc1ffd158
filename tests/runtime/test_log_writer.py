"""The log writer thread: a stuck stdout costs dropped lines, counted and reported, never a wait."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from service.runtime.log import LogSink


@contextmanager
def pipe() -> Iterator[tuple[int, IO[bytes]]]:
    """A pipe nobody reads yet: its read end, and its write end as a binary stream."""
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "wb")
    try:
        yield read_fd, stream
    finally:
        # The read end first: a writer thread still blocked gets EPIPE, never a
        # closed (and maybe reused) descriptor.
        with contextlib.suppress(OSError):
            os.close(read_fd)
        stream.close()


def drain(read_fd: int, into: list[bytes]) -> threading.Thread:
    def run() -> None:
        while chunk := os.read(read_fd, 65536):
            into.append(chunk)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_stuck_stream_drops_lines_counts_them_and_says_so_when_it_resumes() -> None:
    with pipe() as (read_fd, stream):
        sink = LogSink(stream)
        sink.start_writer(buffer_bytes=16_384)
        sink.buffering = True
        line = b"x" * 90
        slowest = 0.0
        for n in range(5000):  # ~500 KB: far more than the pipe (64 KB) and the buffer
            began = time.perf_counter()
            sink.write_line(b"%05d " % n + line)
            if n % 50 == 49:
                sink.flush()  # one chunk of 50 lines, as the service's flusher does
            slowest = max(slowest, time.perf_counter() - began)
        assert slowest < 0.05  # never waits for the pipe
        dropped = sink.dropped
        assert dropped > 0
        assert dropped % 50 == 0  # whole chunks
        # The reader comes back: what was buffered is written, then the report.
        out: list[bytes] = []
        reader = drain(read_fd, out)
        sink.buffering = False
        sink.write_line(b"after")
        assert sink.stop_writer(5.0)
        stream.close()
        reader.join(5)
    lines = b"".join(out).splitlines()
    assert lines[-1] == b"after"
    numbers = [int(ln[:5]) for ln in lines[:-1] if not ln.startswith(b"{")]
    assert numbers == sorted(numbers)
    reports = [json.loads(ln) for ln in lines if ln.startswith(b"{")]
    assert reports
    assert reports[0]["event"] == "log lines dropped: the output did not keep up"
    assert reports[0]["level"] == "warning"
    assert sum(r["dropped"] for r in reports) == dropped == 5000 - len(numbers)
    # Each report stands where its lines were lost: the numbering jumps by its count.
    position = 0
    for raw in lines[:-1]:
        if raw.startswith(b"{"):
            position += json.loads(raw)["dropped"]
        else:
            assert int(raw[:5]) == position
            position += 1
    assert position == 5000


def test_stopping_gives_up_on_a_stuck_stream_after_its_timeout() -> None:
    with pipe() as (read_fd, stream):
        sink = LogSink(stream)
        sink.start_writer(buffer_bytes=1 << 20)
        sink.write_line(b"y" * (256 * 1024))  # more than the pipe holds: the thread blocks
        sink.flush()
        time.sleep(0.05)
        began = time.monotonic()
        assert not sink.stop_writer(0.2)
        assert time.monotonic() - began < 1.0
        # Lines still never wait: they go to the stuck thread's buffer.
        began = time.monotonic()
        for _ in range(100):
            sink.write_line(b"z" * 1000, urgent=True)
        assert time.monotonic() - began < 0.5
        os.close(read_fd)  # the thread's write fails now (EPIPE), and it ends
        assert sink.stop_writer(5.0)


def test_a_chunk_larger_than_the_buffer_is_written_when_nothing_waits() -> None:
    with pipe() as (read_fd, stream):
        out: list[bytes] = []
        reader = drain(read_fd, out)
        sink = LogSink(stream)
        sink.start_writer(buffer_bytes=1024)
        sink.write_line(b"w" * 10_000)
        sink.flush()
        assert sink.stop_writer(5.0)
        assert sink.dropped == 0
        stream.close()
        reader.join(5)
    assert b"".join(out) == b"w" * 10_000 + b"\n"
