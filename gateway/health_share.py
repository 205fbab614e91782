"""Active health checks once per server under `--workers N`: one worker leads.

Every worker has its own backend states, but probing each backend from every
worker would multiply the checks (and model discovery) by N. So the worker that
holds an exclusive lock on `health.lock` in the server's run directory runs the
rounds and publishes each round's results to `health.json` (written aside, then
renamed over: a reader never sees half a file); the others read the file when it
changes (a stat every FOLLOW_POLL_S) and take the results as their own. The
kernel drops the lock when its holder dies, and the first follower to try it
next (once per interval) leads from then on: no election protocol, no master.

Published per backend: what the probe said this round, the resulting health, and
the discovered models; keyed by name and identity (kind, URL), so a worker still
on an older config ignores a result for a backend it knows differently. Passive
ejection stays each worker's own: it is what that worker's traffic saw. Anything
else to be measured once per server (engine scrapes) can follow the same file.
"""

from __future__ import annotations

import fcntl
import json
import os

from .log import health_logger
from .rundir import RunDir
from .state import Gateway

FOLLOW_POLL_S = 0.25


class HealthShare:
    def __init__(self, run: RunDir) -> None:
        self._lock_path = run.file("health.lock")
        self.path = run.file("health.json")
        self._lock_fd: int | None = None
        self._seen: tuple | None = None

    @property
    def leading(self) -> bool:
        return self._lock_fd is not None

    def lead(self) -> bool:
        """True when this worker runs the checks (taking the lock if it is free)."""
        if self._lock_fd is not None:
            return True
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        health_logger.info("worker %s runs the health checks for the server", os.getpid())
        return True

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def publish(self, gateway: Gateway, answered: dict[str, bool]) -> None:
        backends = {}
        for state in gateway.states.values():
            if state.name not in answered:
                continue
            backends[state.name] = {
                "identity": list(state.config.identity()), "ok": answered[state.name],
                "healthy": state.healthy, "checked": state.checked,
                "models": None if state.config.models is not None
                else list(state.discovered_models)}
        aside = f"{self.path}.{os.getpid()}"
        try:
            with open(aside, "w", encoding="utf-8") as f:
                json.dump({"backends": backends}, f)
            os.replace(aside, self.path)
        except OSError as exc:   # the followers keep their last results meanwhile
            health_logger.warning("cannot publish the health results to %s: %s",
                                  self.path, exc.strerror or exc)

    def follow(self, gateway: Gateway) -> bool:
        """Take the leader's latest results, if new; True when there were some."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return False
        try:
            with open(self.path, encoding="utf-8") as f:
                backends = json.load(f)["backends"]
        except (OSError, ValueError, KeyError):
            return False   # replaced while being read: the next poll sees the new one
        self._seen = seen
        if apply(gateway, backends):
            gateway.rebuild()
        gateway.publish_backend_up()
        return True


def apply(gateway: Gateway, backends: dict) -> bool:
    """Set each backend's health from the leader's results; True when models changed."""
    changed = False
    for state in gateway.states.values():
        entry = backends.get(state.name)
        if entry is None or entry["identity"] != list(state.config.identity()):
            continue
        # Health only: a passing check never ends a passive ejection (dispatch/ejection.py).
        state.healthy, state.checked = entry["healthy"], entry["checked"]
        models = entry["models"]
        if models is not None and tuple(models) != state.discovered_models:
            state.discovered_models = tuple(models)
            changed = True
    return changed
