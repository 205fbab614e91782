"""`state.sqlite`: the file a server's lasting state lives in (budget counts, responses
kept for stateless runtimes), opened the same way by each of its users.

Python's sqlite3 in WAL mode (readers never wait for the writer; every worker of
`--workers N` opens the same file), `synchronous=NORMAL` (a crash loses at most the last
commits, never the file). A missing folder is made. Each user has its own table and its
own connection, used on one thread of its own, so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class StateFile:
    def __init__(self, path: str, schema: str, thread_name: str) -> None:
        self.path = path
        self._schema = schema
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._db: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            folder = os.path.dirname(self.path)
            if folder:
                os.makedirs(folder, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=5, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(self._schema)
            self._db = db
        return self._db

    async def run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """`work(connection)` on the file's thread (the file opened on first use)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, lambda: work(self._open()))

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        await asyncio.get_running_loop().run_in_executor(self._thread, shut)
        self._thread.shutdown(wait=True)
