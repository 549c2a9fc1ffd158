"""Logging: structlog set-up, the request-id context variable, the stdlib bridge.

One output stream, one format: JSON lines (orjson) in production, structlog's
console renderer on a TTY or when configured. aiohttp's and asyncio's own
stdlib records go through the same processors, so they carry the request id
too. Values are rendered as JSON strings, so a CR/LF in a header cannot forge
a second line; the console renderer escapes control characters for the same
reason.

Writing is the expensive part of a log line (a syscall per line costs more
than rendering it, see ../shared/PERF-NOTES.md), so lines are appended to a
buffer that is written at most every ``log.flush_interval`` seconds, at once
for warnings and errors, and at exit. The access log has its own fast path
(:class:`AccessLog`) because it runs once per request.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import IO, Any

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from service.config import LogSettings

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class LogSink:
    """A buffered, thread-safe line writer in front of one binary stream.

    While ``buffering``, the thread that switched it on (the event loop's)
    may also defer access-log entries (:class:`AccessLog`): raw values
    appended to a list that only that thread touches, rendered in one pass
    when it flushes. A request then pays for a tuple instead of a rendered
    line and a lock (ISSUE 2's HTTP benchmark). Flushes from other threads (an urgent error)
    leave the deferred entries for the owner's next flush.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lines: list[bytes] = []
        self._lock = threading.Lock()
        self._buffering = False
        self._owner: int | None = None
        self._deferred: list[tuple[Any, ...]] = []

    @property
    def buffering(self) -> bool:
        return self._buffering

    @buffering.setter
    def buffering(self, on: bool) -> None:
        if not on:
            self._render_deferred()
        self._buffering = on
        self._owner = threading.get_ident() if on else None

    def write_line(self, line: bytes, *, urgent: bool = False) -> None:
        with self._lock:
            self._lines.append(line)
        if urgent or not self._buffering:
            self.flush()

    def _render_deferred(self) -> None:
        if self._deferred and threading.get_ident() == self._owner:
            entries, self._deferred = self._deferred, []
            rendered = _render_access(entries)
            with self._lock:
                self._lines.append(rendered)

    def flush(self) -> None:
        self._render_deferred()
        with self._lock:
            if not self._lines:
                return
            data = b"\n".join(self._lines) + b"\n"
            self._lines.clear()
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):
            pass  # stdout closed (e.g. a broken pipe at exit): nothing useful left to do


_sink = LogSink(sys.stdout.buffer)


def sink() -> LogSink:
    return _sink


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


class _Clock:
    """ISO-8601 UTC timestamps with milliseconds.

    Formatting a timestamp costs more than a cheap request's whole access
    line otherwise would, so the text is made once per millisecond (many
    requests share one under load) and the date part once per second.
    """

    __slots__ = ("_ms", "_prefix", "_second", "_text")

    def __init__(self) -> None:
        self._ms = -1
        self._second = -1
        self._prefix = ""
        self._text = b""

    def now(self) -> str:
        return self.at(time.time()).decode()

    def at(self, when: float) -> bytes:
        """The timestamp of ``when`` (seconds since the epoch) as ASCII bytes."""
        ms = int(when * 1000)
        if ms != self._ms:
            second, frac = divmod(ms, 1000)
            if second != self._second:
                self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
                self._second = second
            self._text = f"{self._prefix}.{frac:03d}Z".encode()
            self._ms = ms
        return self._text


_clock = _Clock()


def _add_timestamp(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict["timestamp"] = _clock.now()
    return event_dict


def _add_request_id(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    rid = request_id_var.get()
    if rid is not None:
        event_dict.setdefault("request_id", rid)
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
        structlog.stdlib.add_log_level,
        _add_timestamp,
    ]


def use_console(settings: LogSettings, stream: IO[bytes] | None = None) -> bool:
    if settings.format == "auto":
        return (stream or sys.stdout).isatty()
    return settings.format == "console"


def configure(settings: LogSettings, stream: IO[bytes] | None = None) -> None:
    """Set structlog and the stdlib root logger up; safe to call again (tests do)."""
    global _sink
    _sink.flush()
    _sink = LogSink(stream if stream is not None else sys.stdout.buffer)
    console = use_console(settings, stream)
    level = _LEVELS[settings.level]
    renderer: Processor
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        final: list[Processor] = [_escape_controls, renderer]
    else:
        final = [structlog.processors.format_exc_info,
                 structlog.processors.JSONRenderer(serializer=_json_dumps)]
    structlog.configure(
        processors=[_add_logger_name, *_shared_processors(),
                    structlog.processors.StackInfoRenderer(), *final],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=True,
    )
    # The stdlib bridge: aiohttp, asyncio and every other library logger.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_processors(), structlog.stdlib.add_logger_name,
                           structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    *(final if console else [structlog.processors.format_exc_info,
                                             _render_json_str])],
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


_ACCESS_LINE = (
    b'{"event":"access","logger":"access","level":"info","timestamp":"%s",'
    b'"request_id":"%s","method":"%s","route":%s,"path":%s,"status":%d,'
    b'"duration_ms":%r,"remote":%s,"user_agent":%s}'
)
_dumps = orjson.dumps
_time = time.time


class AccessLog:
    """One line per request, rendered without structlog's processor chain.

    ``sample`` < 1 logs that fraction of fast, successful requests; errors
    (status >= 400) and requests slower than ``slow_seconds`` are always logged.
    """

    __slots__ = ("_console_log", "_rand", "enabled", "sample", "slow_seconds")

    def __init__(self, settings: LogSettings, slow_seconds: float = 1.0) -> None:
        self.enabled = settings.access_log and settings.access_log_sample > 0
        self.sample = settings.access_log_sample
        self.slow_seconds = slow_seconds
        self._rand: Callable[[], float] = random.random
        self._console_log = get_logger("access") if use_console(settings) else None

    def log(
        self, method: str, route: str, path: str, status: int, duration: float,
        request_id: str, remote: str | None, user_agent: str | None,
    ) -> None:
        if self.sample < 1.0 and status < 400 and duration < self.slow_seconds \
                and self._rand() >= self.sample:
            return
        if self._console_log is not None:
            self._console_log.info(
                "access", request_id=request_id, method=method, route=route, path=path,
                status=status, duration_ms=int(duration * 1_000_000) / 1000, remote=remote,
                user_agent=user_agent)
            return
        sink = _sink
        entry = (_time(), request_id, method, route, path, status, duration, remote,
                 user_agent)
        if sink._buffering:
            sink._deferred.append(entry)  # rendered later, many at once (LogSink.flush)
        else:
            sink.write_line(_render_access((entry,)))


def _render_access(entries: list[tuple[Any, ...]] | tuple[tuple[Any, ...], ...]) -> bytes:
    """Access lines for ``(time, request_id, method, route, path, status, duration,
    remote, user_agent)`` entries, joined by newlines.

    Formatted, not a dict through orjson: no container per line for the
    garbage collector to track. Values a client controls (path, remote, user
    agent) and the route template go through orjson for JSON escaping; the
    request id is sanitized by the middleware and the method is an HTTP token,
    so neither can hold a quote, a backslash or a control byte.
    """
    out: list[bytes] = []
    append = out.append
    stamp = _clock.at
    for when, rid, method, route, path, status, duration, remote, agent in entries:
        append(_ACCESS_LINE % (
            stamp(when), rid.encode(), method.encode(), _dumps(route), _dumps(path), status,
            int(duration * 1_000_000) / 1000, _dumps(remote), _dumps(agent)))
    return b"\n".join(out)
