"""Where budget counts live: `state.sqlite` (one server) or `state.redis` (replicas).

Both do one thing, `add_and_read`: add a batch of (key, period) token counts and
return the current periods' totals of the watched keys. limits/budgets.py calls it
off the request path, every FLUSH_S and once more at cleanup.

SQLite: the file as workers/state_file.py opens it (WAL, its own thread); every worker of
`--workers N` opens the same file; a write is one short transaction, and the connection's
timeout lets a worker wait for another's. The table is the budgets' own
(`budget_tokens`): the responses kept for stateless runtimes share the file.

Redis: INCRBY per (key, period) and an expiry after the period (a month and a day
past it), then MGET of the watched keys' periods, in one pipeline.
"""

from __future__ import annotations

import sqlite3
from typing import Iterable

from ..config import Config
from ..workers.state_file import StateFile

Counts = dict[tuple[str, str], int]
PREFIX = "gateway:budget:"
KEEP_S = 32 * 86400 + 86400     # how long a period's count outlives its start (Redis)
SCHEMA = ("CREATE TABLE IF NOT EXISTS budget_tokens (key TEXT NOT NULL, period TEXT NOT NULL, "
          "tokens INTEGER NOT NULL, PRIMARY KEY (key, period))")


class SqliteStore:
    """Counts in `state.sqlite` (workers/state_file.py), table `budget_tokens`."""

    def __init__(self, path: str) -> None:
        self._file = StateFile(path, SCHEMA, "budget-sqlite")

    @staticmethod
    def _add_and_read(db: sqlite3.Connection, pending: Counts, names: set[str],
                      periods: tuple[str, str]) -> Counts:
        if pending:
            with db:   # one transaction
                db.execute("BEGIN IMMEDIATE")
                db.executemany(
                    "INSERT INTO budget_tokens (key, period, tokens) VALUES (?, ?, ?) "
                    "ON CONFLICT (key, period) DO UPDATE SET tokens = tokens + excluded.tokens",
                    [(k, p, n) for (k, p), n in pending.items()])
        rows = db.execute("SELECT key, period, tokens FROM budget_tokens WHERE period IN "
                          "(?, ?)", periods).fetchall()
        return {(k, p): n for k, p, n in rows if k in names}

    async def add_and_read(self, pending: Counts, names: Iterable[str],
                           periods: tuple[str, str]) -> Counts:
        wanted = set(names)
        return await self._file.run(
            lambda db: self._add_and_read(db, pending, wanted, periods))

    async def close(self) -> None:
        await self._file.close()


class RedisStore:
    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis   # only with state.redis
        self._client = Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)

    async def add_and_read(self, pending: Counts, names: Iterable[str],
                           periods: tuple[str, str]) -> Counts:
        names = sorted(names)
        pipe = self._client.pipeline(transaction=False)
        for (key, period), tokens in pending.items():
            name = f"{PREFIX}{key}:{period}"
            pipe.incrby(name, tokens)
            pipe.expire(name, KEEP_S)
        wanted = [(k, p) for k in names for p in periods]
        if wanted:
            pipe.mget([f"{PREFIX}{k}:{p}" for k, p in wanted])
        replies = await pipe.execute()
        if not wanted:
            return {}
        return {kp: int(v) for kp, v in zip(wanted, replies[-1]) if v is not None}

    async def close(self) -> None:
        await self._client.aclose()


def make_store(config: Config) -> SqliteStore | RedisStore | None:
    """Redis when set (shared by replicas), else the SQLite file, else none."""
    if config.state.redis:
        return RedisStore(config.state.redis)
    if config.state.sqlite:
        return SqliteStore(config.state.sqlite)
    return None
