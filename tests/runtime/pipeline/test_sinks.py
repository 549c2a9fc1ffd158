"""The file sink: whole batches, fsynced; torn tails set aside; failed writes leave nothing."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from service.runtime.pipeline.sinks import FileSink, SinkLine, make_sink
from service.runtime.pipeline.sinks.file import set_aside_torn_tail
from service.runtime.settings import PipelineSettings


def _lines(n: int, start: int = 0) -> list[SinkLine]:
    return [(f"id-{i}", f'{{"id":"id-{i}"}}'.encode()) for i in range(start, start + n)]


@pytest.mark.asyncio
async def test_batches_are_appended_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "events.jsonl"
    sink = FileSink(path)
    await sink.open()
    await sink.write_batch(_lines(3))
    await sink.write_batch(_lines(2, start=3))
    await sink.close()
    ids = [json.loads(line)["id"] for line in path.read_bytes().splitlines()]
    assert ids == [f"id-{i}" for i in range(5)]
    assert path.read_bytes().endswith(b"\n")
    assert sink.healthy


@pytest.mark.asyncio
async def test_reopening_appends_after_existing_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    for start in (0, 2):
        sink = FileSink(path)
        await sink.open()
        await sink.write_batch(_lines(2, start))
        await sink.close()
    assert len(path.read_bytes().splitlines()) == 4
    assert sink.set_aside == 0


@pytest.mark.asyncio
async def test_a_torn_last_line_is_set_aside_at_open(
    tmp_path: Path, log_output: io.BytesIO
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"id":"a"}\n{"id":"b"}\n{"id":"c","ty')
    sink = FileSink(path)
    await sink.open()
    await sink.write_batch(_lines(1))
    await sink.close()
    assert path.read_bytes() == b'{"id":"a"}\n{"id":"b"}\n{"id":"id-0"}\n'
    sides = list(tmp_path.glob("events.jsonl.torn-*"))
    assert len(sides) == 1
    assert sides[0].read_bytes() == b'{"id":"c","ty'
    assert sink.set_aside == len(b'{"id":"c","ty')
    logged = [json.loads(line) for line in log_output.getvalue().splitlines()]
    assert any(line["event"].startswith("sink had a torn last line") for line in logged)


def test_a_file_that_is_one_torn_line_is_emptied(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"x" * 200_000)  # longer than one backward read
    assert set_aside_torn_tail(path) == 200_000
    assert path.read_bytes() == b""


def test_clean_or_missing_files_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    assert set_aside_torn_tail(path) == 0
    path.write_bytes(b'{"id":"a"}\n')
    assert set_aside_torn_tail(path) == 0
    assert path.read_bytes() == b'{"id":"a"}\n'
    assert not list(tmp_path.glob("*.torn-*"))


def test_a_failed_write_leaves_no_part_of_the_batch(tmp_path: Path) -> None:
    """A write that fails half-way (here: over RLIMIT_FSIZE) is truncated back to the last batch.

    Run in a child process: the file-size limit applies to every file the
    process writes, pytest's own output included.
    """
    path = tmp_path / "events.jsonl"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        from service.runtime.pipeline.sinks import FileSink
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        sink = FileSink(Path({str(path)!r}))
        sink._open()
        sink._write([("a", b"x" * 1000)])
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, resource.RLIM_INFINITY))
        try:
            sink._write([("b", b"y" * 1000)])
        except OSError as exc:
            print("failed", exc.errno)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        sink._write([("c", b"z" * 10)])
        sink._close()
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.startswith("failed"), out
    assert path.read_bytes() == b"x" * 1000 + b"\n" + b"z" * 10 + b"\n"


def test_make_sink_chooses_the_backend(tmp_path: Path) -> None:
    sink = make_sink(PipelineSettings(sink_path=tmp_path / "e.jsonl"))
    assert isinstance(sink, FileSink)
    # The redis backend is tested in tests/runtime/pipeline/test_sinks_redis.py.
    assert make_sink(PipelineSettings(sink="redis")).backend == "redis"
