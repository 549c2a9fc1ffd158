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
import weakref
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

    While ``buffering``, lines wait for the next ``flush`` (the service calls it
    every ``log.flush_interval``), except warnings and errors. The thread that
    switched buffering on (the event loop's) also runs the flush hooks at each
    of its flushes: producers that keep raw per-request records and render
    them in batches (the API middleware's access lines), so a request pays for
    a tuple instead of a rendered line (ISSUE 2's HTTP benchmark).
    ``max_pending`` tells such a producer how many records it may hold for the
    next flush: 0 while unbuffered, so it writes at once. Flushes from other
    threads (an urgent error) leave the hooks to the owner's next flush.
    """

    MAX_PENDING = 8192

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lines: list[bytes] = []
        self._lock = threading.Lock()
        self._buffering = False
        self._owner: int | None = None
        self._hooks: list[weakref.WeakMethod[Callable[[], None]]] = []
        self.max_pending = 0

    @property
    def buffering(self) -> bool:
        return self._buffering

    @buffering.setter
    def buffering(self, on: bool) -> None:
        if not on:
            self._run_hooks()
        self._buffering = on
        self._owner = threading.get_ident() if on else None
        self.max_pending = self.MAX_PENDING if on else 0

    def add_flush_hook(self, hook: Callable[[], None]) -> None:
        """Run the bound method ``hook`` at the owner's flushes, for as long as its object lives."""
        self._hooks = [ref for ref in self._hooks if ref() is not None]
        self._hooks.append(weakref.WeakMethod(hook))

    def reset(self, stream: IO[bytes]) -> None:
        """Write what is pending, then write to ``stream``, unbuffered (``configure``)."""
        self.buffering = False
        self.flush()
        self._stream = stream

    def write_line(self, line: bytes, *, urgent: bool = False) -> None:
        with self._lock:
            self._lines.append(line)
        if urgent or not self._buffering:
            self.flush()

    def _run_hooks(self) -> None:
        if self._owner is not None and threading.get_ident() == self._owner:
            for ref in self._hooks:
                hook = ref()
                if hook is not None:
                    hook()

    def flush(self) -> None:
        self._run_hooks()
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
        self._text = ""

    def now(self) -> str:
        return self.at(time.time())

    def at(self, when: float) -> str:
        """The timestamp of ``when`` (seconds since the epoch)."""
        ms = int(when * 1000)
        if ms != self._ms:
            second, frac = divmod(ms, 1000)
            if second != self._second:
                self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
                self._second = second
            self._text = f"{self._prefix}.{frac:03d}Z"
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
    # The sink object stays the same (the middleware holds it); only its stream changes.
    _sink.reset(stream if stream is not None else sys.stdout.buffer)
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


# An access entry: (perf_counter at the end, request id, access_prefix(method,
# route, status), raw path, duration in seconds, peer address, user agent).
AccessEntry = tuple[float, str, str, str, float, Any, "str | None"]

_dumps = orjson.dumps
# JSON string literals of values that repeat from request to request (paths,
# peer addresses, user agents), so a line costs a dictionary lookup for each.
# Clients choose these values, so the cache is emptied when it grows large.
_JSON_CACHE_MAX = 4096
_json_literals: dict[Any, str] = {None: "null"}


def _json_literal(value: Any) -> str:
    """``value`` (a str, a peer address tuple or None) as a JSON string literal, cached."""
    text = _json_literals.get(value)
    if text is None:
        if len(_json_literals) >= _JSON_CACHE_MAX:
            _json_literals.clear()
            _json_literals[None] = "null"
        # A peer address is (host, port, ...) for TCP, as aiohttp's request.remote reads it.
        shown = str(value[0]) if isinstance(value, tuple) else str(value)
        text = _json_literals[value] = _dumps(shown).decode()
    return text


def access_prefix(method: str, route: str, status: int) -> str:
    """The ``"method":...,"route":...,"status":...,`` part of an access line, made once."""
    return (f'"method":{_dumps(method).decode()},"route":{_dumps(route).decode()},'
            f'"status":{int(status)},')


# "duration_ms" texts by whole microseconds: loaded servers answer in a few
# thousand distinct microsecond values, and a float format costs more than
# the rest of the line's fields together.
_durations: dict[int, str] = {}


def _duration_text(us: int) -> str:
    if len(_durations) >= _JSON_CACHE_MAX * 4:
        _durations.clear()
    text = _durations[us] = f"{us // 1000}.{us % 1000:03d}"
    return text


class AccessLog:
    """One line per request, rendered without structlog's processor chain.

    ``sample`` < 1 logs that fraction of fast, successful requests; errors
    (status >= 400) and requests slower than ``slow_seconds`` are always logged.
    The API middleware renders its entries in batches (:func:`render_access`);
    :meth:`log` writes one line at once.
    """

    __slots__ = ("_console_log", "_rand", "console", "enabled", "sample", "slow_seconds")

    def __init__(self, settings: LogSettings, slow_seconds: float = 1.0) -> None:
        self.enabled = settings.access_log and settings.access_log_sample > 0
        self.sample = settings.access_log_sample
        self.slow_seconds = slow_seconds
        self._rand: Callable[[], float] = random.random
        self.console = use_console(settings)
        self._console_log = get_logger("access") if self.console else None

    def sampled(self, status: int, duration: float) -> bool:
        """Whether a request is logged (with ``enabled``)."""
        return (self.sample >= 1.0 or status >= 400 or duration >= self.slow_seconds
                or self._rand() < self.sample)

    def log(
        self, method: str, route: str, path: str, status: int, duration: float,
        request_id: str, remote: str | None, user_agent: str | None,
    ) -> None:
        if self.sampled(status, duration):
            self.write(method, route, path, status, duration, request_id, remote, user_agent)

    def write(
        self, method: str, route: str, path: str, status: int, duration: float,
        request_id: str, remote: str | None, user_agent: str | None,
    ) -> None:
        """One line, already sampled."""
        if self._console_log is not None:
            self._console_log.info(
                "access", request_id=request_id, method=method, route=route, path=path,
                status=status, duration_ms=int(duration * 1_000_000) / 1000, remote=remote,
                user_agent=user_agent)
            return
        _sink.write_line(render_access([(time.perf_counter(), request_id,
                                         access_prefix(method, route, status), path,
                                         duration, remote, user_agent)]))


def render_access(entries: list[AccessEntry]) -> bytes:
    """Access lines for :data:`AccessEntry` tuples, joined by newlines.

    One f-string per line and a cached JSON literal for each value a client
    controls (path, peer, user agent): no container per line for the garbage
    collector, no ``orjson.dumps`` per field (about 14,000 instructions a line
    before, under 8,000 now, counted with callgrind). The request id is
    sanitized by the middleware and the method and route are escaped once in
    :func:`access_prefix`, so none of them can break out of their string.
    """
    # Entries carry perf_counter() readings (the middleware has one already);
    # this offset turns them into wall-clock time.
    offset = time.time() - time.perf_counter()
    literal = _json_literals.get
    duration_text = _durations.get
    out: list[str] = []
    append = out.append
    stamp = ""
    stamp_until = 0.0  # entries come in completion order: one timestamp per millisecond
    for end, rid, prefix, path, duration, peer, agent in entries:
        when = end + offset
        if when >= stamp_until or when < stamp_until - 0.001:
            stamp = _clock.at(when)
            stamp_until = (int(when * 1000) + 1) / 1000
        append(f'{{"event":"access","logger":"access","level":"info","timestamp":"{stamp}",'
               f'"request_id":"{rid}",{prefix}"path":{literal(path) or _json_literal(path)},'
               f'"duration_ms":{duration_text(us := int(duration * 1e6)) or _duration_text(us)},'
               f'"remote":{literal(peer) or _json_literal(peer)},'
               f'"user_agent":{literal(agent) or _json_literal(agent)}}}')
    return "\n".join(out).encode()
