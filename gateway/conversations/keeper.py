"""`Conversations`: the store the config chose, used with its `responses` limits.

The store is chosen once, when the app starts, from `state`: `sqlite` (a file), else
`redis`, else memory; a reload that changes `state` takes effect on the next start (an
open store is not swapped under running requests). `ttl_s` and `max_stored` are read from
each request's own config, so a reload changes them at once. A store that fails (a disk
error, Redis down) is a 503 naming it, logged once per outage; never a traceback.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from ..config import Config, ResponsesConfig, StateConfig
from ..errors import GatewayError
from ..log import server_logger
from .store import MemoryStore, Store


class StoreUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "state_store_unavailable"


def make_store(state: StateConfig) -> Store:
    if state.sqlite:
        from .sqlite import SqliteStore
        return SqliteStore(state.sqlite)
    if state.redis:
        from .redis import RedisStore   # imports redis only when it is configured
        return RedisStore(state.redis)
    return MemoryStore()


class Conversations:
    """The stored responses of stateless runtimes, as JSON objects."""

    def __init__(self, config: Config, store: Store | None = None) -> None:
        self.store = store if store is not None else make_store(config.state)
        self.kind = type(self.store).__name__
        # How this store fails (its own errors, besides the OS's and timeouts).
        self._failures = (OSError, asyncio.TimeoutError, *getattr(self.store, "FAILURES", ()))
        self._down = False
        # Puts under way, by id: a follow-up may come as soon as the client has the answer,
        # before its put is done; a get or delete of that id waits for it.
        self._writing: dict[str, asyncio.Task] = {}

    def put_soon(self, rid: str, entry: dict[str, Any], limits: ResponsesConfig) -> None:
        """Store `entry` under `rid` in the background, starting now (before the answer
        reaches the client); a failure is logged by `_call`, the answer stands."""
        task = asyncio.get_running_loop().create_task(self.put(rid, entry, limits))
        self._writing[rid] = task
        task.add_done_callback(lambda done: self._written(rid, done))

    def _written(self, rid: str, task: asyncio.Task) -> None:
        if self._writing.get(rid) is task:
            del self._writing[rid]
        if not task.cancelled():
            task.exception()   # StoreUnavailable: logged once per outage already

    async def settled(self, rid: str) -> None:
        """Until a put of `rid` under way is done (whether it worked or not)."""
        task = self._writing.get(rid)
        if task is not None:
            await asyncio.wait([task])

    async def get(self, rid: str) -> dict[str, Any] | None:
        await self.settled(rid)
        raw = await self._call(self.store.get(rid))
        if raw is None:
            return None
        entry = orjson.loads(raw)
        return entry if isinstance(entry, dict) else None

    async def put(self, rid: str, entry: dict[str, Any], limits: ResponsesConfig) -> None:
        await self._call(self.store.put(rid, orjson.dumps(entry), limits.ttl_s,
                                        limits.max_stored))

    async def delete(self, rid: str) -> bool:
        await self.settled(rid)
        return bool(await self._call(self.store.delete(rid)))

    async def close(self) -> None:
        if self._writing:
            await asyncio.wait(list(self._writing.values()))
        await self.store.close()

    async def _call(self, work: Any) -> Any:
        try:
            result = await work
        except self._failures as exc:
            if not self._down:
                self._down = True
                server_logger.warning("stored responses: the %s failed: %s", self.kind, exc)
            raise StoreUnavailable("the gateway's store of responses is unavailable; "
                                   "try again shortly", retry_after=1) from None
        if self._down:
            self._down = False
            server_logger.info("stored responses: the %s answers again", self.kind)
        return result
