"""The gateway's live state: the active config, each backend's runtime state, the route table.

A config change builds everything new first and swaps it in with plain
assignments, so a running request keeps the objects it already holds.
"""

from __future__ import annotations

import asyncio

from .auth import KeyRing
from .backends import BackendState
from .config import Config
from .dispatch import Dispatcher
from .metrics import Metrics
from .pools import RouteTable
from .ratelimit import Limiter
from .upstream import Upstream


class Gateway:
    def __init__(self, config: Config, upstream: Upstream, metrics: Metrics) -> None:
        self.upstream = upstream
        self.metrics = metrics
        self.dispatcher = Dispatcher(config, upstream, metrics)
        self.states: dict[str, BackendState] = {}
        self.draining = False
        self.streams: set[asyncio.Task] = set()   # handler tasks relaying a stream now
        self.cut: set[asyncio.Task] = set()       # streams the drain deadline cancelled
        self.limiter = Limiter()
        self.last_reload_error = None   # a reload.ReloadResult while the file is invalid
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Switch to a new config; backends whose kind and URL stay keep their state."""
        states: dict[str, BackendState] = {}
        for name, backend in config.backends.items():
            old = self.states.get(name)
            if old is not None and old.config.identity() == backend.identity():
                old.config = backend
                states[name] = old
            else:
                state = states[name] = BackendState(backend)
                # Read at scrape time: no gauge update (and its lock) on every request.
                self.metrics.in_flight.labels(name).set_function(lambda s=state: s.in_flight)
        for name in self.states.keys() - states.keys():
            self.metrics.forget_backend(name)
        table = RouteTable(config, states, getattr(self, "table", None))
        self.keys = KeyRing(config.auth_keys)
        self.limiter.apply(config.auth_keys)   # a key whose name stays keeps its buckets
        self.config, self.states, self.table = config, states, table
        self.dispatcher.config = config
        self.publish_backend_up()

    def publish_backend_up(self) -> None:
        for state in self.states.values():
            self.metrics.backend_up.labels(state.name).set(1 if state.available() else 0)

    def rebuild(self) -> None:
        """Rebuild the route table after model discovery changed some pool."""
        self.table = RouteTable(self.config, self.states, self.table)

    async def drain(self, drain_s: float) -> None:
        """Give running streams drain_s to finish, then cut the rest with an error event."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while self.streams and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self.streams):
            self.cut.add(task)
            task.cancel()

    def ready(self) -> bool:
        return not self.draining and any(s.available() for s in self.states.values())
