"""Coverage-guided fuzzing (atheris / libFuzzer) of the event parsers.

The same promise as tests/test_fuzz_parsers.py, searched for with coverage
feedback instead of generated: whatever bytes arrive, ``parse_line``,
``parse_json_body`` and ``parse_ndjson_body`` return valid events or raise
``EventError``, and the TCP answer built from the error is one line.
The first input byte picks the parser, the rest is the input.

    .venv/bin/python fuzz/fuzz_events.py fuzz/corpus -max_total_time=60

(``make fuzz`` does this). libFuzzer writes a crashing input to
``crash-<sha1>``; add it to ``EDGE_CASES`` in tests/test_fuzz_parsers.py so it
stays a regression test, then fix the parser.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import orjson

    from service.domain.events import (
        MAX_ID_CHARS,
        MAX_PAYLOAD_BYTES,
        EventError,
        parse_json_body,
        parse_line,
        parse_ndjson_body,
    )
    from service.domain.tcp_events import json_error

MAX_EVENTS = 8


def _check(event: object) -> None:
    assert isinstance(event, dict), event
    for key in ("user_id", "type"):
        value = event[key]
        assert isinstance(value, str), event
        assert 1 <= len(value) <= MAX_ID_CHARS, event
    if "payload" in event:
        assert len(orjson.dumps(event["payload"])) <= MAX_PAYLOAD_BYTES


def test_one_input(data: bytes) -> None:
    if not data:
        return
    which, body = data[0] % 3, data[1:]
    try:
        if which == 0:
            _check(parse_line(body))
        else:
            parse = parse_json_body if which == 1 else parse_ndjson_body
            events = parse(body, MAX_EVENTS)
            assert 1 <= len(events) <= MAX_EVENTS
            for event in events:
                _check(event)
    except EventError as exc:
        if which == 0:
            answer = json_error(body, exc)
            assert answer.endswith(b"\n"), answer
            assert answer.count(b"\n") == 1, answer


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
