"""The server's side of the wire: every fixed answer, and ``ERR`` lines built safely.

The protocol's answers: ``PONG``, ``BYE shutdown``, ``BYE idle_timeout``,
``ERR busy``, ``ERR line_too_long``, ``ERR overloaded``, ``ERR internal``;
a line handler adds its own (``OK <id>``, ``ERR <code> <detail>``) and
builds error lines with :func:`error_line`.
"""

from __future__ import annotations

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
