"""Listening sockets a process inherits from its supervisor, by listener name.

A worker of ``service serve --workers N`` does not bind the public ports: the
supervisor (``service.runtime.workers``) binds one socket per worker and
listener and hands it down. A listener starts with :func:`listen`, which
takes the socket inherited under its name and binds its own only when there
is none (always, in a single process). A listener of your own does the same
to be shared by the workers.

A process-wide table, because descriptors are process-wide; it is filled
once, before the event loop starts. This module imports nothing else, so
every listener may import it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Mapping

_inherited: dict[str, socket.socket] = {}


def adopt(sockets: Mapping[str, socket.socket]) -> None:
    """Make ``sockets`` this process's inherited listening sockets (the worker link does)."""
    _inherited.clear()
    _inherited.update(sockets)


def inherited_socket(name: str) -> socket.socket | None:
    """The listening socket handed down for listener ``name``, if any; each is taken once."""
    return _inherited.pop(name, None)


async def listen(
    name: str,
    factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    backlog: int,
) -> asyncio.Server:
    """Serve ``factory``'s protocols for listener ``name``: on the socket inherited
    under that name (a worker's, bound by its supervisor), else on ``host:port``."""
    loop = asyncio.get_running_loop()
    sock = inherited_socket(name)
    if sock is not None:
        return await loop.create_server(factory, sock=sock, backlog=backlog)
    return await loop.create_server(factory, host, port, backlog=backlog, reuse_address=True)


def close_untaken() -> list[str]:
    """Close the sockets no listener took (this service has no such listener); their names."""
    names = sorted(_inherited)
    for sock in _inherited.values():
        sock.close()
    _inherited.clear()
    return names
