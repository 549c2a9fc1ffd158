"""Property-based fuzzing of the event parsers (service/events.py) with hypothesis.

The promise under test: whatever bytes a client sends, the parsers either
return events or raise :class:`EventError` - never any other exception (which
would become a 500 on HTTP or a dropped connection on TCP). A found crash
becomes an ``@example`` here, so it stays a regression test.
Coverage-guided fuzzing of the same functions lives in ``fuzz/`` (``make fuzz``).
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.domain.events import (
    _MAX_GROWTH,
    MAX_ID_CHARS,
    MAX_PAYLOAD_BYTES,
    EventError,
    parse_json_body,
    parse_line,
    parse_ndjson_body,
)
from tests.support.process import ServiceProcess, running_service

MAX_EVENTS = 5
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Any JSON value (what a client can put where an event or a field belongs).
# orjson's integer range; JSON has no NaN or infinity.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=80)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
ids = st.text(min_size=1, max_size=MAX_ID_CHARS)
valid_events = st.fixed_dictionaries(
    {"user_id": ids, "type": ids},
    optional={
        "payload": st.dictionaries(st.text(max_size=10), json_values, max_size=4),
        "ts": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
    },
)
# Near-misses: an event with one field replaced by any JSON value, or an extra key.
near_events = st.builds(
    lambda ev, key, value: {**ev, key: value},
    valid_events,
    st.sampled_from(["user_id", "type", "payload", "ts", "extra", ""]),
    json_values,
)
any_objects = valid_events | near_events | json_values


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


# Byte-level inputs: arbitrary bytes, JSON text with bytes spliced in, and edge cases
# that broke JSON parsers elsewhere (deep nesting, huge numbers, lone surrogates, BOM).
EDGE_CASES = [
    b"",
    b"\n",
    b"\x00",
    b"\xff\xfe",
    b"\xef\xbb\xbf{}",
    b"[" * 5000 + b"]" * 5000,
    b"{" * 2000,
    b'{"user_id":"a","type":"b","ts":1e400}',
    b'{"user_id":"a","type":"b","ts":' + b"9" * 400 + b"}",
    b'"\\ud800"',
    b'{"user_id":"\\udc00","type":"t"}',
    b'{"user_id":"a","type":"b","payload":{"k":' + b"[" * 1100 + b"]" * 1100 + b"}}",
    b"NaN",
    b"Infinity",
    b"-0",
    b"[]",
    b"{}",
    b"null",
    b"\xed\xa0\x80",
    b'{"user_id":"a","type":"b","payload":{"x":"' + b"y" * MAX_PAYLOAD_BYTES + b'"}}',
]


def _spliced() -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda doc, pos, junk: doc[: pos % (len(doc) + 1)] + junk + doc[pos % (len(doc) + 1) :],
        any_objects.map(_dumps),
        st.integers(0, 10_000),
        st.binary(max_size=8),
    )


raw_inputs = (
    st.binary(max_size=512) | any_objects.map(_dumps) | _spliced() | st.sampled_from(EDGE_CASES)
)


def _only_event_errors(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except EventError as exc:
        error = exc
    assert error.code in ("invalid_json", "invalid_event", "too_many_events")
    assert str(error)  # the message is built, whatever the input
    error.as_dict()
    return None


@FUZZ
@given(raw_inputs)
@example(b"[" * 5000 + b"]" * 5000)
def test_parse_line_raises_only_event_errors(data: bytes) -> None:
    event = _only_event_errors(parse_line, data)
    if event is not None:
        _check_event(event)


@FUZZ
@given(raw_inputs | st.lists(any_objects, max_size=8).map(_dumps))
def test_parse_json_body_raises_only_event_errors(data: bytes) -> None:
    events = _only_event_errors(parse_json_body, data, MAX_EVENTS)
    if events is not None:
        assert 1 <= len(events) <= MAX_EVENTS
        for event in events:
            _check_event(event)


ndjson_bodies = st.lists(
    raw_inputs.map(lambda b: b.replace(b"\n", b" ")) | st.just(b"") | st.just(b"  \r"), max_size=8
).map(b"\n".join)


@FUZZ
@given(ndjson_bodies | raw_inputs)
def test_parse_ndjson_body_raises_only_event_errors(data: bytes) -> None:
    events = _only_event_errors(parse_ndjson_body, data, MAX_EVENTS)
    if events is not None:
        assert 1 <= len(events) <= MAX_EVENTS
        for event in events:
            _check_event(event)


def _check_event(event: Any) -> None:
    """What a parser returns is a valid event (the validation is not bypassed)."""
    assert isinstance(event, dict)
    assert set(event) <= {"user_id", "type", "payload", "ts"}
    for key in ("user_id", "type"):
        assert isinstance(event[key], str)
        assert 1 <= len(event[key]) <= MAX_ID_CHARS
    if "payload" in event:
        assert isinstance(event["payload"], dict)
        assert len(orjson.dumps(event["payload"])) <= MAX_PAYLOAD_BYTES
    if "ts" in event:
        assert not isinstance(event["ts"], bool)
        assert math.isfinite(event["ts"])


@FUZZ
@given(valid_events)
def test_valid_events_round_trip_through_every_parser(event: dict[str, Any]) -> None:
    """The other half of the property: a valid event is never refused."""
    line = _dumps(event)
    if len(orjson.dumps(event.get("payload", {}))) > MAX_PAYLOAD_BYTES:
        return
    assert parse_line(line) == event
    assert parse_json_body(line, MAX_EVENTS) == [event]
    assert parse_json_body(_dumps([event, event]), MAX_EVENTS) == [event, event]
    assert parse_ndjson_body(line + b"\n\n" + line + b"\n", MAX_EVENTS) == [event, event]


@pytest.mark.parametrize("data", EDGE_CASES)
def test_edge_cases_raise_only_event_errors(data: bytes) -> None:
    """Known hard inputs, checked on every run (not left to the generator's luck)."""
    for fn, args in (
        (parse_line, ()),
        (parse_json_body, (MAX_EVENTS,)),
        (parse_ndjson_body, (MAX_EVENTS,)),
    ):
        _only_event_errors(fn, data, *args)


# JSON number literals as clients may write them: exponents make the shortest
# sources for the longest re-encodings ("1e15" is 1000000000000000.0).
number_literals = st.builds(
    lambda sign, mantissa, frac, exp: f"{sign}{mantissa}{frac}{exp}",
    st.sampled_from(["", "-"]),
    st.integers(0, 10**20).map(str),
    st.sampled_from(["", ".0", ".5", ".123456789"]),
    st.integers(-330, 330).map(lambda e: f"e{e}") | st.just(""),
)
growth_sources = (
    number_literals
    | any_objects.map(_dumps).map(bytes.decode)
    | st.lists(number_literals, max_size=20).map(lambda xs: f"[{','.join(xs)}]")
)


@FUZZ
@given(growth_sources)
@example("1e15")
@example("[9e15,-1e15,1e9]")
def test_reencoding_grows_json_at_most_five_times(source: str) -> None:
    """events._MAX_GROWTH: why a short line's payload needs no size check."""
    try:
        value = orjson.loads(source)
    except orjson.JSONDecodeError:
        return
    assert len(orjson.dumps(value)) <= _MAX_GROWTH * len(source.encode())


def test_a_payload_over_the_limit_is_refused_whatever_its_source() -> None:
    # An oversized payload needs a source longer than the no-check bound.
    big = b'{"user_id":"a","type":"b","payload":{"x":"' + b"y" * MAX_PAYLOAD_BYTES + b'"}}'
    for parse in (
        parse_line,
        lambda b: parse_json_body(b, MAX_EVENTS)[0],
        lambda b: parse_ndjson_body(b, MAX_EVENTS)[0],
    ):
        with pytest.raises(EventError) as info:
            parse(big)
        assert info.value.field == "payload"


def test_too_many_events_is_its_own_code() -> None:
    body = _dumps([{"user_id": "u", "type": "t"}] * (MAX_EVENTS + 1))
    with pytest.raises(EventError) as info:
        parse_json_body(body, MAX_EVENTS)
    assert info.value.code == "too_many_events"
    with pytest.raises(EventError) as info:
        parse_ndjson_body(body.replace(b"},{", b"}\n{")[1:-1], MAX_EVENTS)
    assert info.value.code == "too_many_events"


# --- the TCP line framing, through a real service process -------------------------


@pytest.fixture(scope="module")
def tcp_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    data = tmp_path_factory.mktemp("fuzz-tcp")
    with running_service(
        env={
            "SERVICE_PIPELINE__SINK_PATH": str(data / "events.jsonl"),
            "SERVICE_LOG__ACCESS_LOG": "false",
        }
    ) as proc:
        yield proc


def _expected_answer(line: bytes) -> bytes:
    """The start of the answer the contract promises for one line (without its "\\n")."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if b"\r" in line:
        return b"ERR invalid_json"
    if line.strip() == b"PING":
        return b"PONG"
    try:
        parse_line(line)
    except EventError as exc:
        return b"ERR " + exc.code.encode()
    return b"OK "


tcp_lines = (
    raw_inputs.map(lambda b: b.replace(b"\n", b"")).filter(lambda b: len(b) < 4096)
    | st.sampled_from([b"PING", b"PING\r", b" PING ", b"", b"\r", b"a\rb", b"\x00"])
    | valid_events.map(_dumps).filter(lambda b: len(b) < 4096)
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(
    lines=st.lists(tcp_lines, min_size=1, max_size=12),
    cuts=st.lists(st.integers(0, 2**16), max_size=6),
)
def test_tcp_framing_answers_every_line_in_order(
    tcp_service: ServiceProcess, lines: list[bytes], cuts: list[int]
) -> None:
    """Any bytes, cut anywhere: one answer per line, in order, and the connection lives on."""
    wire = b"".join(line + b"\n" for line in lines) + b"PING\n"
    points = sorted({c % (len(wire) + 1) for c in cuts})
    chunks = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    with socket.create_connection(("127.0.0.1", tcp_service.ports["tcp"]), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for chunk in chunks:
            if chunk:
                sock.sendall(chunk)
        answers = _read_lines(sock, len(lines) + 1)
    assert answers[-1] == b"PONG"
    for line, answer in zip(lines, answers, strict=False):
        assert answer.startswith(_expected_answer(line)), (line, answer)


def _read_lines(sock: socket.socket, count: int) -> list[bytes]:
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    answers = data.split(b"\n")[:-1]
    assert len(answers) == count, (count, data)
    return answers
