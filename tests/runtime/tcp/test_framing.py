"""Line framing as a property: however the bytes are cut into reads, every line gets one answer.

These drive a :class:`Connection` through its protocol callbacks with a
recording transport (no sockets), so hypothesis can try thousands of inputs;
tests/test_tcp.py covers the same protocol over real sockets.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.tcp_events import EventLines
from service.runtime.metrics import Metrics
from service.runtime.tcp import TcpServer
from service.runtime.tcp.connection import Connection
from tests.support.fakes import LocalIntake
from tests.support.settings import make_settings

LINES = [
    b"PING",
    b"PING\r",
    b" PING ",
    b'{"user_id": "u", "type": "t"}',
    b'{"user_id": 1}',
    b"[1]",
    b"null",
    b"",
    b"  \t",
    b"\r",
    b"a\rb",
    b"\x00",
    b"\xff\xfe",
    b'{"a\\n": 1}',
    b"\x1b[2J",
    "é".encode(),
    b"PONG",
    b"OK 1",
]


class RecordingTransport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.data += data

    def write_eof(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def converse(data: bytes, cuts: list[int], max_line_bytes: int = 1024) -> list[bytes]:
    server = TcpServer(
        make_settings(tcp={"max_line_bytes": max_line_bytes}).tcp,
        Metrics(),
        EventLines(LocalIntake(), 5.0),
    )
    conn = Connection(server)
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    last = 0
    for cut in [*sorted(cuts), len(data)]:
        if cut > last:
            conn.data_received(data[last:cut])
            last = cut
    return bytes(transport.data).splitlines(keepends=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(LINES), min_size=1, max_size=40), st.lists(st.integers(0, 2000)))
def test_every_line_gets_exactly_one_answer_in_order(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    answers = converse(data, [c % (len(data) + 1) for c in cuts])
    assert len(answers) == len(lines)
    for line, answer in zip(lines, answers, strict=True):
        assert answer.endswith(b"\n")
        assert answer.count(b"\n") == 1
        assert b"\r" not in answer
        if line.strip() in (b"PING", b"PING\r") and b"\r" not in line.rstrip(b"\r"):
            assert answer == b"PONG\n"
        elif line == b'{"user_id": "u", "type": "t"}':
            assert answer.startswith(b"OK ")
        else:
            assert answer.startswith(b"ERR invalid_"), (line, answer)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 30), st.integers(1025, 5000), st.lists(st.integers(0, 8000)))
def test_a_long_line_ends_the_conversation_after_the_answers_before_it(
    pings: int, long: int, cuts: list[int]
) -> None:
    data = b"PING\n" * pings + b"x" * long + b"\nPING\n"
    answers = converse(data, [c % (len(data) + 1) for c in cuts])
    assert answers == [b"PONG\n"] * pings + [b"ERR line_too_long\n"]


def test_a_client_that_does_not_read_its_answers_is_not_read_either() -> None:
    """Backpressure: LingeringProtocol._update_reading pauses reading while writes are paused.

    The unread lines stay in the kernel's buffers and TCP flow control slows the
    client down, instead of the server buffering what it cannot answer yet.
    """
    server = TcpServer(make_settings().tcp, Metrics(), EventLines(LocalIntake(), 5.0))
    conn = Connection(server)
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(b"PING\n")
    conn.pause_writing()  # the transport's write buffer is over its high-water mark
    assert not transport.reading
    conn.data_received(b"PING\nPING\n")  # already in flight: kept, not answered yet
    assert bytes(transport.data) == b"PONG\n"
    conn.resume_writing()
    assert transport.reading
    assert bytes(transport.data) == b"PONG\n" * 3
