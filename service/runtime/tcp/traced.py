"""A TCP connection whose reads of event lines are spans: what ``TcpServer`` uses with tracing on.

A span per read, not per line: a line costs the server a few microseconds
and a span (even an unsampled one) about as much again, while a read holds
up to hundreds of lines from one client. The span starts with the read's
first line that is not ``PING`` (a connection that only pings makes none),
is current while the read's lines are answered (so each event the pipeline
accepts is stamped with it, and the pipeline's batch spans link back to it),
and ends when the read is done. It carries the client's address and port, so
a client's reads, and through their links its events' writes, can be found.
An answer that has to wait runs in a task that inherits the span's context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind

from service.runtime.tcp.closing import Host
from service.runtime.tcp.connection import Connection

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from service.runtime.tracing.core import Tracing


class TracedConnection(Connection):
    """:class:`Connection`, with a span around each read's lines."""

    __slots__ = ("_depth", "_errors", "_lines", "_span", "_token", "_tracing")

    def __init__(self, server: Host, tracing: Tracing) -> None:
        super().__init__(server)
        self._tracing = tracing
        self._span: Span | None = None
        self._token: object = None
        self._lines = self._errors = self._depth = 0

    def _process(self) -> None:
        # _process runs again from inside itself (end of input, a later answer):
        # only the outermost call ends the span.
        self._depth += 1
        try:
            super()._process()
        finally:
            self._depth -= 1
            if not self._depth and self._span is not None:
                self._end_span()

    def _answer(self, line: bytes | bytearray) -> bytes | None:
        if self._span is None:
            tracing = self._tracing
            span = self._span = tracing.start_root("tcp lines", SpanKind.SERVER, {})
            if span.is_recording():
                peer = self._transport.get_extra_info("peername") if self._transport else None
                span.set_attribute("network.transport", "tcp")
                if isinstance(peer, tuple):
                    span.set_attribute("client.address", str(peer[0]))
                    span.set_attribute("client.port", int(peer[1]))
            self._token = tracing.activate(span)
        answer = super()._answer(line)
        self._lines += 1
        if answer is not None and answer.startswith(b"ERR"):
            self._errors += 1
        return answer

    def _end_span(self) -> None:
        span, self._span = self._span, None
        assert span is not None
        self._tracing.deactivate(self._token)
        if span.is_recording():
            span.set_attribute("tcp.lines", self._lines)
            span.set_attribute("tcp.errors", self._errors)
        span.end()
        self._lines = self._errors = 0
