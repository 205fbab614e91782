"""Draining on SIGTERM: running streams get `server.drain_s` to finish, then are cut.

The listener is closed first (aiohttp's shutdown) and readiness fails from then on.
Streams still running when the time is up are cancelled by us; the relay tells
such a cut from a client that left (`was_cut`) and ends it with an error event.
"""

from __future__ import annotations

import asyncio


class Drain:
    __slots__ = ("draining", "streams", "_cut")

    def __init__(self) -> None:
        self.draining = False
        self.streams: set[asyncio.Task] = set()   # handler tasks relaying a stream now
        self._cut: set[asyncio.Task] = set()      # streams the drain deadline cancelled

    def track(self, task: asyncio.Task) -> None:
        self.streams.add(task)

    def untrack(self, task: asyncio.Task) -> None:
        self.streams.discard(task)

    def was_cut(self, task: asyncio.Task) -> bool:
        """True when `task`'s only cancellation is ours, at the drain deadline."""
        return self.draining and task.cancelling() == 1 and task in self._cut

    async def run(self, drain_s: float) -> None:
        """Give running streams drain_s to finish, then cut the rest."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while self.streams and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self.streams):
            self._cut.add(task)
            task.cancel()
