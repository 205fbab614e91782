"""Under `--workers N`: the one worker that measures for the whole server, and its files.

Some work must run once per server, not once per worker, or it is multiplied by N:
active health checks (health/checks_share.py) and engine scrapes (health/scraper_share.py). The worker
that holds an exclusive lock on `leader.lock` in the server's run directory does all of
it and publishes each kind of result to a JSON file of its own (`Published`: written
aside, then renamed over, so a reader never sees half a file); the others read a file
when it changes (a stat per poll) and take its results as their own. The kernel drops
the lock when its holder dies, and the first worker to try it next leads from then on:
no election protocol, no master. One lock for every kind, so one worker leads them all.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from typing import Any

from ..log import server_logger
from .rundir import RunDir


class Leader:
    """This worker's side of the lock: one per process (a second open file of the same
    lock in one process would be refused by the first)."""

    def __init__(self, run: RunDir) -> None:
        self._path = run.file("leader.lock")
        self._fd: int | None = None
        self.leading = False

    def lead(self) -> bool:
        """True when this worker leads, taking the lock if it is free. Cheap to call
        often: a follower keeps its file open and asks flock again."""
        if self.leading:
            return True
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        self.leading = True
        server_logger.info("worker %s runs the health checks and engine scrapes for the "
                           "server", os.getpid())
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.leading = False


class Published:
    """One kind of result, as the leader last wrote it."""

    def __init__(self, path: str, what: str, logger: logging.Logger) -> None:
        self.path, self._what, self._logger = path, what, logger
        self._seen: tuple | None = None
        self._failing = False

    def write(self, data: Any) -> None:
        """Aside, then renamed over; a failure is logged once until a write succeeds
        (the followers keep their last results meanwhile)."""
        aside = f"{self.path}.{os.getpid()}"
        try:
            with open(aside, "w", encoding="utf-8") as f:
                json.dump(data, f, separators=(",", ":"))
            os.replace(aside, self.path)
        except OSError as exc:
            if not self._failing:
                self._logger.warning("cannot publish the %s to %s: %s", self._what,
                                     self.path, exc.strerror or exc)
            self._failing = True
            return
        self._failing = False

    def read_new(self) -> Any | None:
        """The leader's latest data if it changed since the last read, else None."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return None
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None   # replaced while being read: the next poll sees the new one
        self._seen = seen
        return data
