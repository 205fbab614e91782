"""The waiting room: requests wait here while every backend they could use is full.

A backend is full at its `max_concurrency`, or while its runtime's own fresh reading
says it is saturated (`engine.max_queue`, `engine.max_kv_usage`). A request waits at most
`queue.max_wait_s` (within its retry deadline) in a queue of at most
`queue.max_size`, then gets 503 with Retry-After. Every release wakes the waiters,
who each look again, and so does a scrape round that shows a saturated backend has room.
"""

from __future__ import annotations

import asyncio


class CapacityQueue:
    def __init__(self) -> None:
        self.waiting = 0
        self._freed = asyncio.Event()

    def notify(self) -> None:
        if self.waiting:
            freed, self._freed = self._freed, asyncio.Event()
            freed.set()

    async def wait(self, timeout: float) -> bool:
        """True when some capacity was freed within `timeout`."""
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                await self._freed.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self.waiting -= 1
