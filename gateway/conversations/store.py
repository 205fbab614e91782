"""Where stored responses live: one small interface, and the store in memory.

Entries are JSON bytes under the response's public id (`resp_…`, which names its
backend). Every store forgets an entry `ttl_s` after it was put, and the oldest ones first
once it holds `max_stored`; both are given with each put, so a config reload applies to
the next one.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol


class Store(Protocol):
    FAILURES: tuple[type[BaseException], ...]   # how it fails, besides OSError and timeouts

    async def get(self, rid: str) -> bytes | None: ...

    async def put(self, rid: str, entry: bytes, ttl_s: float, max_stored: int) -> None: ...

    async def delete(self, rid: str) -> bool: ...

    async def close(self) -> None: ...


class MemoryStore:
    """In this process only: lost on restart, not shared by workers or replicas."""

    FAILURES: tuple[type[BaseException], ...] = ()

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, rid: str) -> bytes | None:
        found = self._entries.get(rid)
        if found is None or found[0] <= self._clock():
            return None
        return found[1]

    async def put(self, rid: str, entry: bytes, ttl_s: float, max_stored: int) -> None:
        now = self._clock()
        self._entries.pop(rid, None)
        self._entries[rid] = (now + ttl_s, entry)
        # Oldest first: with one ttl they also expire first (a shorter ttl after a reload
        # leaves a few longer-lived ones behind them until max_stored pushes them out).
        while self._entries:
            oldest, (expires, _) = next(iter(self._entries.items()))
            if expires > now and len(self._entries) <= max_stored:
                break
            del self._entries[oldest]

    async def delete(self, rid: str) -> bool:
        found = self._entries.pop(rid, None)
        return found is not None and found[0] > self._clock()

    async def close(self) -> None:
        self._entries.clear()
