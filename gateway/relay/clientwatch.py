"""The client's side of a stream: `server.client_idle_s`, the limit on a client that
stops reading.

A client that stops reading fills the socket buffers, and then the gateway's
writes to it wait: backpressure, which also holds the runtime back, so memory
stays bounded. That wait is not the runtime's silence (`idle_s` does not run
meanwhile); this watch bounds it instead. One write that waits `client_idle_s`
cancels the stream's task, and the relay ends the stream as `client_slow`.
"""

from __future__ import annotations

import asyncio
import time


class ClientWatch:
    """Cancels `task` once one write to its client has waited `limit_s`.

    A timer per write would cost more than the relay's per-chunk work; the relay
    only notes when a write began (`since`, perf_counter) and that it ended (0.0),
    and one timer, re-armed once per `limit_s`, looks at that note.
    """

    __slots__ = ("since", "fired", "limit_s", "_loop", "_task", "_handle")

    def __init__(self, task: asyncio.Task, limit_s: float) -> None:
        self.since = 0.0
        self.fired = False
        self.limit_s = limit_s
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(limit_s, self._check)

    def _check(self) -> None:
        delay = self.limit_s
        since = self.since
        if since:
            waited = time.perf_counter() - since
            if waited >= self.limit_s:
                self._handle = None
                self.fired = True
                self._task.cancel()
                return
            delay -= waited
        self._handle = self._loop.call_later(delay, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
