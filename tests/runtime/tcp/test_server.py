"""The TCP line protocol (docs/contract.md) over real loopback sockets, on both loops.

Each test starts a ``TcpServer`` in the test's loop with a fake intake that
can be made full or closed, and talks to it with asyncio streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import prometheus_client
import pytest

from service.domain.events import Event
from service.domain.tcp_events import EventLines
from service.runtime.errors import IntakeClosed, IntakeFull
from service.runtime.metrics import Metrics
from service.runtime.tcp import TcpServer
from tests.support.process import parse_metrics
from tests.support.settings import make_settings

EVENT = b'{"user_id": "u1", "type": "click", "payload": {"x": 1}}'


class FakeIntake:
    """An intake that can be made full (it then waits for room) or closed."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.full = False
        self.closed = False
        self.offers_waiting = 0
        self._room: asyncio.Event | None = None

    def make_room(self) -> None:
        self.full = False
        if self._room is not None:
            self._room.set()

    def offer_nowait(self, event: Event) -> str:
        if self.closed:
            raise IntakeClosed
        if self.full:
            raise IntakeFull
        self.events.append(event)
        return f"id-{len(self.events)}"

    async def offer(self, event: Event, timeout: float) -> str:
        self._room = self._room or asyncio.Event()
        self.offers_waiting += 1
        try:
            async with asyncio.timeout(timeout):
                while self.full:
                    await self._room.wait()
        except TimeoutError:
            raise IntakeFull from None
        finally:
            self.offers_waiting -= 1
        return self.offer_nowait(event)


@dataclass
class Running:
    server: TcpServer
    port: int
    metrics: Metrics
    intake: FakeIntake

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)

    def samples(self) -> dict[str, float]:
        return parse_metrics(prometheus_client.generate_latest(self.metrics.registry).decode())


@contextlib.asynccontextmanager
async def tcp_server(**tcp: Any) -> AsyncIterator[Running]:
    settings = make_settings(tcp=tcp)
    metrics = Metrics()
    intake = FakeIntake()
    server = TcpServer(settings.tcp, metrics, EventLines(intake, settings.tcp.overload_timeout))
    addresses = await server.start()
    try:
        yield Running(server, addresses[0][1], metrics, intake)
    finally:
        await server.close()


async def read_lines(reader: asyncio.StreamReader, n: int, timeout: float = 5.0) -> list[str]:
    async with asyncio.timeout(timeout):
        return [(await reader.readline()).decode() for _ in range(n)]


async def ask(running: Running, data: bytes, n: int = 1) -> list[str]:
    reader, writer = await running.connect()
    writer.write(data)
    try:
        return await read_lines(reader, n)
    finally:
        writer.close()


async def until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


# -- the rows of the protocol's table ------------------------------------------------


@pytest.mark.asyncio
async def test_ping_is_answered_pong_with_lf_or_crlf() -> None:
    async with tcp_server() as running:
        assert await ask(running, b"PING\nPING\r\n", 2) == ["PONG\n", "PONG\n"]


@pytest.mark.asyncio
async def test_event_line_is_validated_and_acknowledged_with_the_intake_id() -> None:
    async with tcp_server() as running:
        assert await ask(running, EVENT + b"\n") == ["OK id-1\n"]
        assert running.intake.events == [{"user_id": "u1", "type": "click", "payload": {"x": 1}}]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("line", "answer"),
    [
        (b"{not json", "ERR invalid_json not valid JSON"),
        (b"hello", "ERR invalid_json not valid JSON"),
        (b'{"type": "click"}', "ERR invalid_event user_id: is required"),
        (b'{"user_id": "u", "type": "t", "extra": 1}', "ERR invalid_event extra: unknown field"),
        (b"[1, 2]", "ERR invalid_event an event must be a JSON object"),
        (b'"a string"', "ERR invalid_event an event must be a JSON object"),
        (b"\xff\xfe{}", "ERR invalid_json not valid UTF-8"),
        (b'{"user_id": "\x00"}', "ERR invalid_json NUL byte in line"),
        (b"   \t ", "ERR invalid_json empty line"),
        (b"", "ERR invalid_json empty line"),
        (b'{"user_id": "u",\r"type": "t"}', "ERR invalid_json bare CR in line"),
        (b"\r\r", "ERR invalid_json bare CR in line"),
    ],
)
async def test_bad_lines_get_a_clear_error_and_the_connection_goes_on(
    line: bytes, answer: str
) -> None:
    async with tcp_server() as running:
        got = await ask(running, line + b"\nPING\n", 2)
        assert got[0].startswith(answer), got
        assert got[1] == "PONG\n"
        assert running.intake.events == []


@pytest.mark.asyncio
async def test_an_error_detail_cannot_break_the_line_framing() -> None:
    async with tcp_server() as running:
        # The unknown field's name holds a newline and a CR (escaped in JSON).
        got = await ask(running, b'{"user_id": "u", "type": "t", "a\\nOK x\\r": 1}\nPING\n', 2)
        assert got[0].startswith("ERR invalid_event a OK x"), got
        assert got[1] == "PONG\n"


@pytest.mark.asyncio
async def test_pipelined_lines_are_answered_in_order() -> None:
    async with tcp_server() as running:
        kinds = [i % 3 for i in range(3000)]
        lines = [(b"PING", EVENT, b"nope")[k] for k in kinds]
        got = await ask(running, b"\n".join(lines) + b"\n", len(lines))
        oks = iter(range(1, 2000))
        expected = [
            ("PONG\n" if k == 0 else f"OK id-{next(oks)}\n" if k == 1 else "ERR") for k in kinds
        ]
        assert [g if not g.startswith("ERR") else "ERR" for g in got] == expected


@pytest.mark.asyncio
async def test_a_line_split_over_many_writes_is_one_line() -> None:
    async with tcp_server() as running:
        reader, writer = await running.connect()
        for byte in EVENT:
            writer.write(bytes([byte]))
            await writer.drain()
        writer.write(b"\nPI")
        await asyncio.sleep(0.02)
        writer.write(b"NG\n")
        assert await read_lines(reader, 2) == ["OK id-1\n", "PONG\n"]
        writer.close()


@pytest.mark.asyncio
async def test_a_last_line_without_newline_is_answered_before_close() -> None:
    async with tcp_server() as running:
        reader, writer = await running.connect()
        writer.write(b"PING\nPING")
        writer.write_eof()
        async with asyncio.timeout(5):
            assert await reader.read() == b"PONG\nPONG\n"
        writer.close()


# -- limits -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_line_over_max_line_bytes_gets_err_line_too_long_then_close() -> None:
    async with tcp_server(max_line_bytes=1024) as running:
        at_limit = b'{"user_id": "u", "type": "' + b"t" * 10 + b'", "payload": {"p": "'
        at_limit += b"x" * (1024 - len(at_limit) - 3) + b'"}}'
        assert len(at_limit) == 1024
        reader, writer = await running.connect()
        writer.write(b"PING\n" + at_limit + b"\n" + b"y" * 1025 + b"\nPING\n")
        async with asyncio.timeout(5):
            data = await reader.read()
        assert data == b"PONG\nOK id-1\nERR line_too_long\n"
        writer.close()
        samples = running.samples()
        assert samples['service_tcp_messages_total{result="error"}'] == 1


@pytest.mark.asyncio
async def test_an_endless_line_is_cut_without_waiting_for_its_newline() -> None:
    async with tcp_server(max_line_bytes=1024) as running:
        reader, writer = await running.connect()
        writer.write(b"z" * 5000)  # no newline ever
        async with asyncio.timeout(5):
            assert await reader.read() == b"ERR line_too_long\n"
        writer.close()


@pytest.mark.asyncio
async def test_over_max_connections_a_client_gets_err_busy_then_close() -> None:
    async with tcp_server(max_connections=2) as running:
        first = await running.connect()
        second = await running.connect()
        assert await ask(running, b"", 1) == ["ERR busy\n"]
        for _, writer in (first, second):
            writer.write(b"PING\n")
        assert await read_lines(first[0], 1) == ["PONG\n"]
        assert await read_lines(second[0], 1) == ["PONG\n"]
        first[1].close()
        await until(lambda: running.server.active == 1)
        assert await ask(running, b"PING\n") == ["PONG\n"]  # room again
        second[1].close()
        samples = running.samples()
        assert samples['service_tcp_connections_total{result="accepted"}'] == 3
        assert samples['service_tcp_connections_total{result="rejected"}'] == 1


@pytest.mark.asyncio
async def test_an_idle_connection_is_closed_after_idle_timeout() -> None:
    async with tcp_server(idle_timeout=0.4) as running:
        idle_reader, idle_writer = await running.connect()
        busy_reader, busy_writer = await running.connect()
        began = time.monotonic()
        for _ in range(8):  # the busy one keeps talking through the idle period
            busy_writer.write(b"PING\n")
            assert await read_lines(busy_reader, 1) == ["PONG\n"]
            await asyncio.sleep(0.1)
        async with asyncio.timeout(5):
            assert await idle_reader.read() == b"BYE idle_timeout\n"
        assert 0.4 <= time.monotonic() - began < 3
        busy_writer.write(b"PING\n")
        assert await read_lines(busy_reader, 1) == ["PONG\n"]
        for w in (idle_writer, busy_writer):
            w.close()


@pytest.mark.asyncio
async def test_a_client_that_never_reads_cannot_grow_server_memory_and_is_cut() -> None:
    async with tcp_server(write_timeout=0.5) as running:
        _reader, writer = await running.connect()
        writer.transport.set_write_buffer_limits(high=64 << 20)
        sent = 32 << 20  # 32 MiB of PINGs = 32 MiB of answers the client never reads
        writer.write(b"PING\n" * (sent // 5))
        await until(lambda: any(c._write_paused for c in running.server.connections))
        await asyncio.sleep(0.2)
        (conn,) = running.server.connections
        assert conn._transport is not None
        # Bounded by a read chunk, the write buffer's high-water mark and one flush.
        assert conn._transport.get_write_buffer_size() < 1 << 20
        assert len(conn._buffer) < 1 << 20
        assert writer.transport.get_write_buffer_size() > 8 << 20  # TCP pushed back
        await until(lambda: running.server.active == 0, timeout=5)
        writer.transport.abort()


# -- backpressure -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_full_pipeline_stops_reading_and_answers_overloaded_after_the_timeout() -> None:
    async with tcp_server(overload_timeout=0.3) as running:
        running.intake.full = True
        reader, writer = await running.connect()
        began = time.monotonic()
        writer.write(EVENT + b"\nPING\n")
        assert await read_lines(reader, 2) == ["ERR overloaded no room in the pipeline\n", "PONG\n"]
        assert time.monotonic() - began >= 0.3
        writer.close()


@pytest.mark.asyncio
async def test_an_event_waiting_for_room_is_acknowledged_when_room_comes() -> None:
    async with tcp_server(overload_timeout=5) as running:
        running.intake.full = True
        reader, writer = await running.connect()
        # 18 MB behind the event, more than loopback's socket buffers hold.
        writer.write(EVENT + b"\nPING\n" + (b"x" * 60_000 + b"\n") * 300)
        await until(lambda: running.intake.offers_waiting == 1)
        # Waiting: one named task in the tcp group, reading paused, input left in TCP.
        waiting = [t for t in asyncio.all_tasks() if t.get_name() == "tcp:answer-later"]
        assert len(waiting) == 1
        assert running.metrics.task_groups.of(waiting[0]) == "tcp"
        assert waiting[0] in running.server._tasks  # owned (TcpServer.spawn): not fire-and-forget
        await asyncio.sleep(0.1)
        (conn,) = running.server.connections
        assert len(conn._buffer) < 1 << 20
        assert writer.transport.get_write_buffer_size() > 0
        running.intake.make_room()
        got = await read_lines(reader, 3)
        assert got[:2] == ["OK id-1\n", "PONG\n"]
        assert got[2].startswith("ERR invalid_json")
        assert waiting[0].done()
        assert waiting[0] not in running.server._tasks  # reaped once finished
        writer.close()


@pytest.mark.asyncio
async def test_a_closed_intake_says_bye_shutdown() -> None:
    async with tcp_server() as running:
        running.intake.closed = True
        reader, writer = await running.connect()
        writer.write(b"PING\n" + EVENT + b"\nPING\n")
        async with asyncio.timeout(5):
            assert await reader.read() == b"PONG\nBYE shutdown\n"
        writer.close()


@pytest.mark.asyncio
async def test_an_intake_bug_is_an_err_internal_and_the_connection_goes_on() -> None:
    async with tcp_server() as running:

        def broken(event: Event) -> str:
            raise RuntimeError("bug")

        running.intake.offer_nowait = broken  # type: ignore[method-assign]
        running.server.handler = EventLines(running.intake, 5.0)
        got = await ask(running, EVENT + b"\nPING\n", 2)
        assert got == ["ERR internal unexpected server error\n", "PONG\n"]


@pytest.mark.asyncio
async def test_a_half_closed_client_gets_every_answer_then_the_close() -> None:
    async with tcp_server(overload_timeout=5) as running:
        running.intake.full = True
        reader, writer = await running.connect()
        writer.write(b"PING\n" + EVENT + b"\nPING\nPING")
        writer.write_eof()
        await until(lambda: running.intake.offers_waiting == 1)
        running.intake.make_room()
        async with asyncio.timeout(5):
            assert await reader.read() == b"PONG\nOK id-1\nPONG\nPONG\n"
        writer.close()


# -- metrics ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_metrics_count_connections_and_messages() -> None:
    async with tcp_server() as running:
        reader, writer = await running.connect()
        other = await running.connect()
        writer.write(b"PING\n" + EVENT + b"\nbad\n")
        await read_lines(reader, 3)
        samples = running.samples()
        assert samples["service_tcp_connections_active"] == 2
        assert samples['service_tcp_connections_total{result="accepted"}'] == 2
        assert samples['service_tcp_messages_total{result="ok"}'] == 2
        assert samples['service_tcp_messages_total{result="error"}'] == 1
        writer.close()
        other[1].close()
        await until(lambda: running.samples()["service_tcp_connections_active"] == 0)
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert "tcp:sweeper" in names


# -- shutdown ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_shutdown_answers_what_was_read_says_bye_and_closes_in_time(
    log_output: io.BytesIO,
) -> None:
    async with tcp_server(overload_timeout=30) as running:
        idle = [await running.connect() for _ in range(10)]
        partial_reader, partial_writer = await running.connect()
        partial_writer.write(b"PING\nPIN")  # half a line: not read as a line
        assert await read_lines(partial_reader, 1) == ["PONG\n"]
        running.intake.full = True
        waiting_reader, waiting_writer = await running.connect()
        waiting_writer.write(EVENT + b"\nPING\n")
        await until(lambda: running.intake.offers_waiting == 1)

        began = time.monotonic()
        await running.server.stop_accepting()
        with pytest.raises(ConnectionRefusedError):
            await running.connect()
        await running.server.finish(2.0)
        # The waiting line holds the shutdown until just before the deadline.
        assert time.monotonic() - began < 2.0 + 0.5

        async with asyncio.timeout(5):
            for reader, _ in idle:
                assert await reader.read() == b"BYE shutdown\n"
            assert await partial_reader.read() == b"BYE shutdown\n"
            # The line waiting for room is answered before the grace period ends.
            assert await waiting_reader.read() == (
                b"ERR overloaded no room in the pipeline\nPONG\nBYE shutdown\n"
            )
        assert running.server.active == 0
        for _, writer in (
            *idle,
            (partial_reader, partial_writer),
            (waiting_reader, waiting_writer),
        ):
            writer.close()
    lines = [json.loads(x) for x in log_output.getvalue().splitlines()]
    closed = [x for x in lines if x["event"] == "tcp clients closed"]
    assert closed
    assert closed[0]["unanswered"] == 0


@pytest.mark.asyncio
async def test_shutdown_does_not_wait_for_clients_that_never_close() -> None:
    async with tcp_server() as running:
        _reader, writer = await running.connect()
        writer.transport.pause_reading()  # never reads the BYE, never closes
        await until(lambda: running.server.active == 1)
        began = time.monotonic()
        await running.server.finish(5.0)
        assert time.monotonic() - began < 1.0
        assert running.server.active == 0
        writer.close()


@pytest.mark.asyncio
async def test_shutdown_cuts_a_client_that_does_not_read_at_the_deadline(
    log_output: io.BytesIO,
) -> None:
    async with tcp_server(write_timeout=60) as running:
        _reader, writer = await running.connect()
        writer.transport.pause_reading()
        writer.write(b"PING\n" * ((16 << 20) // 5))  # answers pile up: it cannot get its BYE
        await until(lambda: any(c._write_paused for c in running.server.connections))
        began = time.monotonic()
        await running.server.finish(0.5)
        assert time.monotonic() - began < 0.5 + 0.5
        assert running.server.active == 0
        writer.transport.abort()
    lines = [json.loads(x) for x in log_output.getvalue().splitlines()]
    (closed,) = [x for x in lines if x["event"] == "tcp clients closed"]
    assert closed["cut"] == 1
