"""The server's side of the wire: every fixed answer, and ``ERR`` lines built safely.

SPEC.md's table names the answers (``PONG``, ``OK <id>``, ``ERR <code> <detail>``,
``BYE shutdown``); the error codes are those of the event schema
(``invalid_json``, ``invalid_event``) plus ``overloaded``, ``line_too_long`` and
``busy``. Lines that are not JSON for a framing reason (empty, a NUL byte,
invalid UTF-8, a bare CR) are ``invalid_json`` with a detail that says which.
"""

from __future__ import annotations

from service.events import EventError

MAX_DETAIL_CHARS = 200

PONG = b"PONG\n"
BYE_SHUTDOWN = b"BYE shutdown\n"
BYE_IDLE = b"BYE idle_timeout\n"
ERR_BUSY = b"ERR busy\n"
ERR_TOO_LONG = b"ERR line_too_long\n"
ERR_OVERLOADED = b"ERR overloaded no room in the pipeline\n"
ERR_INTERNAL = b"ERR internal unexpected server error\n"
ERR_BARE_CR = b"ERR invalid_json bare CR in line\n"

# Control characters in a detail (e.g. an unknown field name chosen by the
# client) must not break the line protocol.
_CONTROLS = {c: " " for c in (*range(32), 127)}


def error_line(code: str, detail: str) -> bytes:
    """``ERR <code> <detail>``: one line, whatever the detail contains."""
    detail = detail.translate(_CONTROLS)[:MAX_DETAIL_CHARS]
    return f"ERR {code} {detail}\n".encode()


def json_error(line: bytes | bytearray, exc: EventError) -> bytes:
    """Name the common reasons a line is not JSON more clearly than the parser does."""
    if exc.code != "invalid_json":
        return error_line(exc.code, str(exc))
    if not line.strip():
        return error_line("invalid_json", "empty line")
    if b"\0" in line:
        return error_line("invalid_json", "NUL byte in line")
    try:
        line.decode()
    except UnicodeDecodeError:
        return error_line("invalid_json", "not valid UTF-8")
    return error_line("invalid_json", str(exc))
