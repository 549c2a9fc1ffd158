"""The access log: one line per request, rendered without structlog's processor chain.

It runs once per request, so it has its own fast path: the HTTP layer keeps
a small record per request and renders many at a time (:func:`render_access`),
one f-string per line, with a cached JSON literal for every value a client
controls. A console-format service logs access lines through structlog instead.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import orjson

from service.runtime.log.setup import get_logger, use_console
from service.runtime.log.timestamps import clock
from service.runtime.log.writer import sink
from service.runtime.settings import LogSettings

_sink = sink()

# An access entry: (perf_counter at the end, request id, access_prefix(method,
# route, status) (then, with tracing on, the "trace_id" and "span_id" fields,
# rendered the same way), raw path, duration in seconds, peer address, user agent).
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


def trace_fields(trace_ids: tuple[str, str]) -> str:
    """The access line's trace and span ids, to follow its prefix (tracing on)."""
    return f'"trace_id":"{trace_ids[0]}","span_id":"{trace_ids[1]}",'


def access_prefix(method: str, route: str, status: int) -> str:
    """The ``"method":...,"route":...,"status":...,`` part of an access line, made once."""
    return (
        f'"method":{_dumps(method).decode()},"route":{_dumps(route).decode()},'
        f'"status":{int(status)},'
    )


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
        return (
            self.sample >= 1.0
            or status >= 400
            or duration >= self.slow_seconds
            or self._rand() < self.sample
        )

    def log(
        self,
        method: str,
        route: str,
        path: str,
        status: int,
        duration: float,
        request_id: str,
        remote: str | None,
        user_agent: str | None,
    ) -> None:
        if self.sampled(status, duration):
            self.write(method, route, path, status, duration, request_id, remote, user_agent)

    def write(
        self,
        method: str,
        route: str,
        path: str,
        status: int,
        duration: float,
        request_id: str,
        remote: str | None,
        user_agent: str | None,
        *,
        trace_ids: tuple[str, str] | None = None,
    ) -> None:
        """One line, already sampled; ``trace_ids``: the request's sampled span (tracing on)."""
        if self._console_log is not None:
            self._console_log.info(
                "access",
                **({"trace_id": trace_ids[0], "span_id": trace_ids[1]} if trace_ids else {}),
                request_id=request_id,
                method=method,
                route=route,
                path=path,
                status=status,
                duration_ms=int(duration * 1_000_000) / 1000,
                remote=remote,
                user_agent=user_agent,
            )
            return
        prefix = access_prefix(method, route, status)
        if trace_ids:
            prefix += trace_fields(trace_ids)
        _sink.write_line(
            render_access(
                [
                    (
                        time.perf_counter(),
                        request_id,
                        prefix,
                        path,
                        duration,
                        remote,
                        user_agent,
                    )
                ]
            )
        )


def render_access(entries: list[AccessEntry]) -> bytes:
    """Access lines for :data:`AccessEntry` tuples, joined by newlines.

    One f-string per line and a cached JSON literal for each value a client
    controls (path, peer, user agent): no container per line for the garbage
    collector, no ``orjson.dumps`` per field (under 8,000 instructions a line,
    counted with callgrind). The request id is
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
            stamp = clock.at(when)
            stamp_until = (int(when * 1000) + 1) / 1000
        append(
            f'{{"event":"access","logger":"access","level":"info","timestamp":"{stamp}",'
            f'"request_id":"{rid}",{prefix}"path":{literal(path) or _json_literal(path)},'
            f'"duration_ms":{duration_text(us := int(duration * 1e6)) or _duration_text(us)},'
            f'"remote":{literal(peer) or _json_literal(peer)},'
            f'"user_agent":{literal(agent) or _json_literal(agent)}}}'
        )
    return "\n".join(out).encode()
