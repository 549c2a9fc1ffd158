"""Logging set-up: structlog's processors, the stdlib bridge, ``get_logger``.

One output stream, one format: JSON lines (orjson) in production, structlog's
console renderer on a TTY or when configured. aiohttp's and asyncio's own
stdlib records go through the same processors, so they carry the request id
too (and, with tracing on, the trace and span ids of the current sampled
span). Values are rendered as JSON strings, so a CR/LF in a header cannot
forge a second line; the console renderer escapes control characters for
the same reason. Lines go to the writer (:mod:`.writer`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import IO, Any

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from service.runtime.log.timestamps import clock
from service.runtime.log.writer import sink
from service.runtime.requestid import request_id_var
from service.runtime.settings import LogSettings

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_sink = sink()


class _SinkLogger:
    """The structlog logger: hands rendered lines to the sink, flushing for errors."""

    __slots__ = ("name",)

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def _info(self, message: str | bytes) -> None:
        _sink.write_line(message.encode() if isinstance(message, str) else message)

    def _error(self, message: str | bytes) -> None:
        _sink.write_line(message.encode() if isinstance(message, str) else message, urgent=True)

    debug = info = msg = log = _info
    warning = error = critical = exception = fatal = err = _error


def _logger_factory(*args: Any) -> _SinkLogger:
    return _SinkLogger(args[0] if args else None)


def _add_logger_name(logger: WrappedLogger, _: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name is not None:
        event_dict.setdefault("logger", name)
    return event_dict


def _add_timestamp(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict["timestamp"] = clock.now()
    return event_dict


def _add_request_id(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    rid = request_id_var.get()
    if rid is not None:
        event_dict.setdefault("request_id", rid)
    return event_dict


# The current span's hex (trace id, span id), or None outside a sampled span:
# set by service.runtime.tracing while tracing is on (None otherwise, and then
# the processor below costs one global read per line).
_trace_ids: Callable[[], tuple[str, str] | None] | None = None


def set_trace_ids(source: Callable[[], tuple[str, str] | None] | None) -> None:
    """Where log lines get their ``trace_id`` and ``span_id`` (None: they get none)."""
    global _trace_ids
    _trace_ids = source


def _add_trace_ids(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    source = _trace_ids
    if source is not None:
        ids = source()
        if ids is not None:
            event_dict.setdefault("trace_id", ids[0])
            event_dict.setdefault("span_id", ids[1])
    return event_dict


_CONTROL = {c: f"\\x{c:02x}" for c in range(32) if c not in (9,)}


def _escape_controls(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Console output only: a CR/LF inside a value must not start a new line."""
    for key, value in event_dict.items():
        if isinstance(value, str) and not value.isprintable():
            event_dict[key] = value.translate(_CONTROL)
    return event_dict


def _json_dumps(obj: Any, **_: Any) -> bytes:
    return orjson.dumps(obj, default=repr)


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        _add_trace_ids,
        structlog.stdlib.add_log_level,
        _add_timestamp,
    ]


def use_console(settings: LogSettings, stream: IO[bytes] | None = None) -> bool:
    if settings.format == "auto":
        return (stream or sys.stdout).isatty()
    return settings.format == "console"


def configure(settings: LogSettings, stream: IO[bytes] | None = None) -> None:
    """Set structlog and the stdlib root logger up; safe to call again (tests do)."""
    # The sink object stays the same (the middleware holds it); only its stream changes.
    _sink.reset(stream if stream is not None else sys.stdout.buffer)
    console = use_console(settings, stream)
    _sink.console = console
    level = _LEVELS[settings.level]
    renderer: Processor
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        final: list[Processor] = [_escape_controls, renderer]
    else:
        final = [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_json_dumps),
        ]
    structlog.configure(
        processors=[
            _add_logger_name,
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            *final,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=True,
    )
    # The stdlib bridge: aiohttp, asyncio and every other library logger.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *_shared_processors(),
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *(final if console else [structlog.processors.format_exc_info, _render_json_str]),
        ],
    )
    handler = _SinkHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access logger stays off: the middleware writes the access line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _render_json_str(_: WrappedLogger, __: str, event_dict: EventDict) -> str:
    return orjson.dumps(event_dict, default=repr).decode()


class _SinkHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        _sink.write_line(line.encode(), urgent=record.levelno >= logging.WARNING)


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A lazy structlog logger; ``name`` becomes the ``logger`` key.

    Safe at import time: the configuration is looked up on first use.
    """
    return structlog.get_logger(*((name,) if name else ()), **initial)
