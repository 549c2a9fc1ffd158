"""The enrichment lookups' TTL cache and single-flight.

:class:`TTLCache` keeps at most ``maxsize`` entries for ``ttl`` seconds each,
evicting the least recently used first (a bound on memory, whatever the key
space). :class:`SingleFlight` makes concurrent lookups of one key share one
call (Go's ``golang.org/x/sync/singleflight``): a thousand events of one user
arriving together cost one downstream request, not a thousand.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING: Any = object()


class TTLCache(Generic[K, V]):
    def __init__(
        self, ttl: float, maxsize: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.maxsize = maxsize
        self._clock = clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K, default: V = _MISSING) -> V:
        """The cached value, or ``default`` (a sentinel by default) when absent or expired."""
        entry = self._data.get(key)
        if entry is None:
            return default
        expires, value = entry
        if expires <= self._clock():
            del self._data[key]
            return default
        self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if self.ttl <= 0:
            return  # caching disabled
        self._data[key] = (self._clock() + self.ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)


def missing(value: object) -> bool:
    return value is _MISSING


class SingleFlight(Generic[K, V]):
    """One in-flight call per key; every concurrent caller of that key awaits it.

    The call runs in its own named task, owned here (awaited in :meth:`close`),
    so a caller that is cancelled does not cancel the call the others share.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    async def do(self, key: K, call: Callable[[], Coroutine[Any, Any, V]]) -> tuple[V, bool]:
        """The result of ``call()`` for ``key``, and whether it was shared with another caller."""
        task = self._calls.get(key)
        shared = task is not None
        if task is None:
            task = asyncio.get_running_loop().create_task(call(), name=f"downstream:{self.name}")
            self._calls[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        # shield: this caller's cancellation must not cancel the call that the
        # other callers of the same key are waiting for.
        return await asyncio.shield(task), shared

    def _done(self, key: K, task: asyncio.Task[V]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            task.exception()  # every caller may have left: mark the error as seen

    async def close(self) -> None:
        """Cancel the calls still running and wait for them (shutdown)."""
        tasks = list(self._calls.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
