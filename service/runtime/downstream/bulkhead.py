"""A bulkhead per downstream: at most ``size`` calls in flight to it at once.

Without it one slow downstream collects every waiting request and starves
the others of connections, memory and file descriptors. When full, a call
waits at most ``max_wait`` seconds for a slot (absorbing a short burst),
then is refused with :class:`BulkheadFull` (counted as "rejected").
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from service.runtime.downstream.errors import BulkheadFull


class Bulkhead:
    def __init__(self, service: str, size: int, max_wait: float = 0.05) -> None:
        self.service = service
        self.size = size
        self.max_wait = max_wait
        self._slots = asyncio.Semaphore(size)

    async def __aenter__(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: does not suspend
            return
        try:
            async with asyncio.timeout(self.max_wait):
                await self._slots.acquire()
        except TimeoutError:
            raise BulkheadFull(self.service) from None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._slots.release()
