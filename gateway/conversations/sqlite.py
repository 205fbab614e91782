"""Stored responses in the SQLite file (`state.sqlite`, opened as workers/state_file.py
says): they survive a restart of one server. Their table is `stored_responses`; budget
counts share the file."""

from __future__ import annotations

import sqlite3
import time

from ..workers.state_file import StateFile

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
        self._file = StateFile(path, SCHEMA, "gateway-sqlite")
        self._run = self._file.run

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
        await self._file.close()
