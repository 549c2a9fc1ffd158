"""Logging: structlog JSON lines with the request id, written off the request path.

* :mod:`.setup`: structlog and the stdlib bridge (``configure``, ``get_logger``);
* :mod:`.writer`: the buffered line sink in front of stdout (``sink``);
* :mod:`.access`: the access log's own fast renderer;
* :mod:`.timestamps`: the timestamp text, made once per millisecond.
"""

from service.runtime.log.setup import configure, get_logger, set_trace_ids, use_console
from service.runtime.log.writer import LogSink, exit_at_once, flushing, sink

__all__ = [
    "LogSink",
    "configure",
    "exit_at_once",
    "flushing",
    "get_logger",
    "set_trace_ids",
    "sink",
    "use_console",
]
