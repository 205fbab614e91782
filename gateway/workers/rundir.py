"""The directory one multi-worker server shares between its processes.

`gateway serve --workers N` makes a fresh one under $TMPDIR at start and removes it
at exit. It holds what the workers share: prometheus-client's per-process metric
files (`metrics/`), the leading worker's lock and what it publishes (health, engine), the
rate-limit buckets, and gunicorn's heartbeat files. Fresh per start, so no file of
an earlier server's workers is ever summed into this one's metrics.

A server killed by SIGKILL cannot remove its directory. The master holds an
exclusive lock on `owner.lock` for its whole life (the kernel drops it when the
process dies), so the next server start removes every directory whose lock it can
take: those of servers that are gone, never a live one's.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

PREFIX = "gateway-run-"
STALE_AFTER_S = 10.0


@dataclass(frozen=True)
class RunDir:
    path: str

    @property
    def metrics(self) -> str:
        return os.path.join(self.path, "metrics")

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)


class OwnedRunDir:
    """The master's side: make, lock, and at the end remove the directory."""

    def __init__(self) -> None:
        sweep_stale()
        self.run = RunDir(tempfile.mkdtemp(prefix=PREFIX))
        os.mkdir(self.run.metrics)
        self._lock_fd = os.open(self.run.file("owner.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    def release_in_child(self) -> None:
        """A worker must not hold the owner's lock: only the master's death frees it."""
        os.close(self._lock_fd)

    def remove(self) -> None:
        shutil.rmtree(self.run.path, ignore_errors=True)
        try:
            os.close(self._lock_fd)
        except OSError:
            pass


def sweep_stale(tmp: str | None = None) -> list[str]:
    """Remove the directories of servers that died without cleaning up; returns them."""
    removed = []
    for path in glob.glob(os.path.join(tmp or tempfile.gettempdir(), PREFIX + "*")):
        lock = os.path.join(path, "owner.lock")
        try:
            if time.time() - os.stat(lock).st_mtime < STALE_AFTER_S:
                continue   # maybe a server starting right now, between mkdtemp and flock
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue   # not ours, or being made right now (no lock file yet)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue   # a live server holds it
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
