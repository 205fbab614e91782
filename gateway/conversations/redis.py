"""Stored responses in Redis (`state.redis`): shared by every replica using that Redis.

Each entry is a string key with Redis's own expiry (`ttl_s`); a sorted set of ids by time
put bounds them to `max_stored`, oldest first. One MULTI/EXEC per put. Only this module
imports `redis`, and only when `state.redis` is set.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

PREFIX = "gateway:response:"
INDEX = "gateway:responses"
TIMEOUT_S = 2.0


class RedisStore:
    FAILURES = (RedisError,)

    def __init__(self, url: str) -> None:
        self._redis = Redis.from_url(url, socket_timeout=TIMEOUT_S,
                                     socket_connect_timeout=TIMEOUT_S)

    async def get(self, rid: str) -> bytes | None:
        return await self._redis.get(PREFIX + rid)

    async def put(self, rid: str, entry: bytes, ttl_s: float, max_stored: int) -> None:
        now = time.time()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(PREFIX + rid, entry, px=max(1, int(ttl_s * 1000)))
            pipe.zadd(INDEX, {rid: now})
            pipe.zremrangebyscore(INDEX, "-inf", now - ttl_s)
            pipe.zrange(INDEX, 0, -max_stored - 1)
            *_, evicted = await pipe.execute()
        if evicted:
            names = [e.decode() if isinstance(e, bytes) else e for e in evicted]
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(INDEX, *names)
                pipe.delete(*(PREFIX + n for n in names))
                await pipe.execute()

    async def delete(self, rid: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(PREFIX + rid)
            pipe.zrem(INDEX, rid)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def close(self) -> None:
        await self._redis.aclose()
