"""Listening sockets a process inherits from its supervisor, by listener name.

A worker of ``service serve --workers N`` does not bind the public ports: the
supervisor (``service.runtime.workers``) binds one socket per worker and
listener and hands it down. A listener asks :func:`inherited_socket` for its
name at start and binds its own only when there is none (always, in a single
process). A listener of your own does the same to be shared by the workers.

A process-wide table, because descriptors are process-wide; it is filled
once, before the event loop starts. This module imports nothing else, so
every listener may import it.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

_inherited: dict[str, socket.socket] = {}


def adopt(sockets: Mapping[str, socket.socket]) -> None:
    """Make ``sockets`` this process's inherited listening sockets (the worker link does)."""
    _inherited.clear()
    _inherited.update(sockets)


def inherited_socket(name: str) -> socket.socket | None:
    """The listening socket handed down for listener ``name``, if any; each is taken once."""
    return _inherited.pop(name, None)


def close_untaken() -> list[str]:
    """Close the sockets no listener took (this service has no such listener); their names."""
    names = sorted(_inherited)
    for sock in _inherited.values():
        sock.close()
    _inherited.clear()
    return names
