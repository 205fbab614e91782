"""Stored responses in a SQLite file (`state.sqlite`): they survive a restart of one server.

Python's sqlite3 in WAL mode (readers never wait for the writer; every worker of
`--workers N` opens the same file), `synchronous=NORMAL` (a crash loses at most the last
commits, never the file). Calls run on one thread of their own, so the event loop never
waits on the disk. The table is the gateway's own (`stored_responses`): other state may
share the file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

SCHEMA = """
CREATE TABLE IF NOT EXISTS stored_responses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    expires REAL NOT NULL,
    entry BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS stored_responses_expires ON stored_responses (expires);
"""


class SqliteStore:
    FAILURES = (sqlite3.Error,)

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-sqlite")
        self._db: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            self._db = db
        return self._db

    async def _run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: work(self._open()))

    async def get(self, rid: str) -> bytes | None:
        def work(db: sqlite3.Connection) -> bytes | None:
            row = db.execute("SELECT entry FROM stored_responses WHERE id = ? AND expires > ?",
                             (rid, time.time())).fetchone()
            return bytes(row[0]) if row else None
        return await self._run(work)

    async def put(self, rid: str, entry: bytes, ttl_s: float, max_stored: int) -> None:
        def work(db: sqlite3.Connection) -> None:
            now = time.time()
            with db:   # one transaction
                db.execute("DELETE FROM stored_responses WHERE id = ? OR expires <= ?",
                           (rid, now))
                db.execute("INSERT INTO stored_responses (id, expires, entry) VALUES (?, ?, ?)",
                           (rid, now + ttl_s, entry))
                # seq grows with every put: past the newest max_stored, the rest go (a walk
                # of max_stored index entries, on this thread, not the event loop's).
                db.execute("DELETE FROM stored_responses WHERE seq <= (SELECT seq FROM "
                           "stored_responses ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                           (max_stored,))
        await self._run(work)

    async def delete(self, rid: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            with db:
                cur = db.execute("DELETE FROM stored_responses WHERE id = ? AND expires > ?",
                                 (rid, time.time()))
            return cur.rowcount > 0
        return await self._run(work)

    async def close(self) -> None:
        def work() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        await asyncio.get_running_loop().run_in_executor(self._thread, work)
        self._thread.shutdown(wait=True)
