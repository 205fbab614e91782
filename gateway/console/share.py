"""Under --workers: what each worker adds to the console's view of the whole server.

Health and engine readings are the server's already (the leader publishes them); what
each worker holds alone is its requests in flight, its passive ejections and 429
cooldowns, its queue (per model and class, the oldest's arrival as a wall-clock time, so a
file a second old still tells the wait to now), each key's waiters, and its tail. While a console is open (a page asked within
`OPEN_FOR_S`, marked by the `console-open` file's time), every worker writes these
to `console-workers/<pid>.json` each `EVERY_S` (written aside, then renamed), and the
worker that answers the page adds up the others' files that are fresh. With no console
open, nothing is written.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from ..workers.rundir import RunDir

EVERY_S = 1.0
OPEN_FOR_S = 10.0
FRESH_S = 3 * EVERY_S   # a file older than this is a worker that is gone


class WorkerShare:
    def __init__(self, run: RunDir) -> None:
        self._dir = run.file("console-workers")
        self._open = run.file("console-open")
        os.makedirs(self._dir, exist_ok=True)
        self._own = os.path.join(self._dir, f"{os.getpid()}.json")

    def mark_open(self) -> None:
        """A page is looking: the workers publish for the next OPEN_FOR_S."""
        try:
            os.utime(self._open)
        except FileNotFoundError:
            with open(self._open, "wb"):
                pass

    def is_open(self) -> bool:
        try:
            return time.time() - os.stat(self._open).st_mtime < OPEN_FOR_S
        except FileNotFoundError:
            return False

    def publish(self, data: dict[str, Any]) -> None:
        aside = self._own + ".tmp"
        try:
            with open(aside, "wb") as f:
                f.write(orjson.dumps(data))
            os.replace(aside, self._own)
        except OSError:
            pass   # the next second tries again; the page shows this worker a bit late

    def others(self) -> list[dict[str, Any]]:
        """The other live workers' latest files."""
        found = []
        now = time.time()
        for entry in os.scandir(self._dir):
            if entry.path == self._own or not entry.name.endswith(".json"):
                continue
            try:
                if now - entry.stat().st_mtime > FRESH_S:
                    continue
                with open(entry.path, "rb") as f:
                    found.append(orjson.loads(f.read()))
            except (OSError, orjson.JSONDecodeError):
                continue   # gone or replaced meanwhile
        return found

    def remove(self) -> None:
        try:
            os.unlink(self._own)
        except FileNotFoundError:
            pass
