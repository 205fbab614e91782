"""A cold pool's `wake` hook: called once per cold period, for the whole server.

A cold period of a backend begins when a request starts waiting because none of
its pool is available (dispatch/cold.py) and ends when one of the backend's
servers (for a discover backend: members) is available again. Its first wait calls
the backend's `wake` (vLLM's sleep-mode `/wake_up`, a scaler's hook) in the
background; later waits of the same period do not. Under `--workers N` the period is
the server's: a mark file per backend in the run directory, taken under a file lock,
says a wake was made; whichever worker sees the backend warm removes it. A mark
older than STALE_MARK_S is ignored, so a worker that died mid-period blocks nothing.

The hook's failure (a refused connection, a timeout, a status of 400 or more) is
logged and counted in gateway_wake_calls_total{backend,result}; no client sees it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from typing import Iterable, Protocol

import aiohttp

from ..config import BackendConfig, url_without_password
from ..log import discovery_logger
from ..metrics import Metrics
from ..workers.rundir import RunDir

WAKE_TIMEOUT_S = 10.0
STALE_MARK_S = 300.0


class Marks(Protocol):
    def claim(self, backend: str, now: float) -> bool:
        """True when no wake of the current period was made: the caller makes it."""
        ...

    def clear(self, backend: str) -> None:
        """The backend is warm: the next cold period wakes again."""
        ...


class MemoryMarks:
    """One process: the marks are a dict."""

    def __init__(self) -> None:
        self._made: dict[str, float] = {}

    def claim(self, backend: str, now: float) -> bool:
        made = self._made.get(backend)
        if made is not None and now - made < STALE_MARK_S:
            return False
        self._made[backend] = now
        return True

    def clear(self, backend: str) -> None:
        self._made.pop(backend, None)


class FileMarks:
    """Under --workers: `wake-<backend>.mark` in the run directory, under flock."""

    def __init__(self, run: RunDir) -> None:
        self._run = run

    def _locked(self, backend: str, edit) -> bool:
        fd = os.open(self._run.file(f"wake-{backend}.mark"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return edit(fd)
        finally:
            os.close(fd)   # and the lock with it

    def claim(self, backend: str, now: float) -> bool:
        wall = time.time()

        def edit(fd: int) -> bool:
            text = os.read(fd, 64).decode(errors="replace").strip()
            try:
                if text and wall - float(text) < STALE_MARK_S:
                    return False
            except ValueError:
                pass
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, f"{wall:.3f}".encode())
            return True

        return self._locked(backend, edit)

    def clear(self, backend: str) -> None:
        self._locked(backend, lambda fd: os.ftruncate(fd, 0) or True)


class Waker:
    """This process's side: which backends it saw cold, and the hook calls it made."""

    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics,
                 run: RunDir | None) -> None:
        self._session = session
        self._metrics = metrics
        self._marks: Marks = FileMarks(run) if run is not None else MemoryMarks()
        self._cold: set[str] = set()
        self._calls: set[asyncio.Task] = set()

    def cold(self, backends: Iterable[BackendConfig]) -> None:
        """A request starts waiting on these backends' cold pool: wake each whose
        period has no wake yet."""
        now = time.monotonic()
        for backend in backends:
            self._cold.add(backend.name)
            if backend.wake is None or not self._claim(backend.name, now):
                continue
            task = asyncio.create_task(self._call(backend))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    def _claim(self, backend: str, now: float) -> bool:
        try:
            return self._marks.claim(backend, now)
        except OSError as exc:
            discovery_logger.warning("cannot mark the wake of backend %s (%s): waking it",
                                     backend, exc.strerror or exc)
            return True

    def sweep(self, gateway, now: float) -> None:
        """End the cold period of every backend seen cold that has a server available."""
        if not self._cold:
            return
        warm = {s.config.label for s in gateway.states.values() if s.available(now)}
        for name in self._cold & warm:
            self._cold.discard(name)
            try:
                self._marks.clear(name)
            except OSError:
                pass   # the mark goes stale instead

    async def _call(self, backend: BackendConfig) -> None:
        wake = backend.wake
        assert wake is not None
        shown = url_without_password(wake.url)
        try:
            async with self._session.request(
                    wake.method, wake.url,
                    timeout=aiohttp.ClientTimeout(total=WAKE_TIMEOUT_S)) as resp:
                await resp.read()
                problem = f"status {resp.status}" if resp.status >= 400 else None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
        result = "error" if problem else "ok"
        self._metrics.wake_calls.labels(backend.name, result).inc()
        if problem:
            discovery_logger.warning("waking backend %s: %s %s failed: %s", backend.name,
                                     wake.method, shown, url_without_password(problem))
        else:
            discovery_logger.info("woke backend %s: %s %s", backend.name, wake.method, shown)

    async def close(self) -> None:
        for task in list(self._calls):
            task.cancel()
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
