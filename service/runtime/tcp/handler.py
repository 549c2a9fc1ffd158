"""What the TCP server asks of a service: a :class:`LineHandler` that answers one line.

The server owns the wire: framing, ``PING``, order, limits, timers,
backpressure and shutdown. A service plugs its protocol in as a line
handler (the demo's takes JSON events, ``service.domain.tcp_events``).

:meth:`LineHandler.handle` gets one complete line, without its line ending
(and without a trailing CR), that is not ``PING``, and returns either

* the answer, as bytes ending in ``\\n`` (``BYE shutdown`` ends the
  connection after it), or
* a coroutine function (no arguments) whose result is the answer, when the
  answer must wait (for room in a pipeline, say): the connection runs it in
  a task and stops reading meanwhile, so TCP pushes back on the client and
  answers stay in order.

Raising :class:`~service.runtime.errors.IntakeClosed` (now, or from the
later answer) ends the connection with ``BYE shutdown``;
:class:`~service.runtime.errors.IntakeFull` from the later answer, or the
server's shutdown deadline, answers ``ERR overloaded``; any other error
answers ``ERR internal`` and is logged. An answer starting with ``ERR``
counts as an error in ``tcp_messages_total``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

# An answer that must wait: called once, in the connection's task.
Later = Callable[[], Awaitable[bytes]]
Answer = bytes | Later


class LineHandler(Protocol):
    def handle(self, line: bytes) -> Answer:
        """The answer to ``line`` (see the module docstring)."""
        ...


class Echo:
    """A line handler that answers every line with itself (examples, tests)."""

    def handle(self, line: bytes) -> Answer:
        return bytes(line) + b"\n"
