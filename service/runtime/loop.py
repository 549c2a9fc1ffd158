"""The event loop, chosen once, at the entry point: uvloop's or the standard library's.

Every entry point (``service serve``, ``service stub``, the load-test
workers) runs its main coroutine through :func:`run_loop`; nothing else
creates a loop, calls ``get_event_loop()`` or installs a policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop, or ``None`` for the stdlib loop (also where uvloop is not installed)."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:  # e.g. Windows, where it does not exist
            return None
        return uvloop.new_event_loop
    return None


def run_loop(coro: Coroutine[Any, Any, T], kind: str, debug: bool = False) -> T:
    with asyncio.Runner(loop_factory=loop_factory(kind), debug=debug) as runner:
        return runner.run(coro)
