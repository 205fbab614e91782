"""The gateway's live state: the active config, each backend's runtime state, the route table.

A config change builds everything new first and swaps it in with plain
assignments, so a running request keeps the objects it already holds: its route
table carries the config it started with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .limits.auth import KeyRing
from .config import Config
from .dispatch import BackendState, Dispatcher, RouteTable
from .dispatch.members import Members
from .relay.drain import Drain
from .metrics import Metrics
from .limits.buckets import Limiter
from .limits.tenants import Tenants
from .runtimes import make_runtime
from .runtimes.http import Transport

if TYPE_CHECKING:
    from .tracing.setup import Tracing


class Gateway:
    def __init__(self, config: Config, transport: Transport, metrics: Metrics,
                 limiter: Limiter | None = None, tenants: Tenants | None = None) -> None:
        self.transport = transport
        self.metrics = metrics
        self.dispatcher = Dispatcher(metrics)
        self.states: dict[str, BackendState] = {}
        self.drain = Drain()
        self.limiter = limiter or Limiter()   # limits.py: shared across workers or replicas
        self.tenants = tenants or Tenants()   # keys' classes, shares, slots, budgets
        self.last_reload_error = None   # a reload.ReloadResult while the file is invalid
        self.tracing: Tracing | None = None   # set while tracing runs (gateway/tracing)
        self.last_reload = None         # the last successful reload.ReloadResult
        self.reloads = 0                # reloads tried: what POST /admin/reload waits on
        self.members = Members()        # discover backends' addresses (gateway/discovery)
        self.apply(config)

    @property
    def draining(self) -> bool:
        return self.drain.draining

    def apply(self, config: Config) -> None:
        """Switch to a new config; backends whose kind and URL stay keep their state."""
        states: dict[str, BackendState] = {}
        for backend in self.members.expand(config.backends):   # members in their backend's place
            name = backend.name
            old = self.states.get(name)
            runtime = make_runtime(backend, self.transport)
            if old is not None and old.config.identity() == backend.identity():
                old.config, old.runtime = backend, runtime
                states[name] = old
            else:
                states[name] = BackendState(backend, runtime)
            shared = self.tenants.shared   # --workers: max_concurrency for the server
            if shared is not None and backend.max_concurrency and states[name].shared is None:
                states[name].count_shared(shared.counter("backend:" + name))
        for name in {s.config.label for s in self.states.values()} - config.backends.keys():
            self.metrics.forget_backend(name)
        for backend in config.backends.values():
            if backend.wake is not None:
                self.metrics.expect_wakes(backend.name)
        table = RouteTable(config, states, getattr(self, "table", None))
        old = getattr(self, "config", None)
        if old is not None:
            for name in {k.name for k in old.auth_keys} - {k.name for k in config.auth_keys}:
                self.metrics.forget_key(name)
        self.keys = KeyRing(config.auth_keys)
        self.limiter.apply(config.auth_keys)   # a key whose name stays keeps its buckets
        self.tenants.apply(config.auth_keys)   # ...and its served count and slots
        self.config, self.states, self.table = config, states, table
        self.publish_backend_up()

    def publish_in_flight(self) -> None:
        """Copied into the gauge when scraped: no gauge update on every request.
        A discover backend's members add up under its configured name."""
        totals = dict.fromkeys(self.config.backends, 0)
        for state in self.states.values():
            totals[state.config.label] = totals.get(state.config.label, 0) + state.in_flight
        for state in self.members.draining.values():
            totals[state.config.label] = totals.get(state.config.label, 0) + state.in_flight
        for name, value in totals.items():
            self.metrics.set_in_flight(name, value)

    def publish_keys(self) -> None:
        """The per-key and queue gauges, copied in when scraped (as in-flight counts)."""
        self.metrics.publish_keys(self.tenants, self.dispatcher.queue)

    def publish_backend_up(self) -> None:
        """1 while the backend (for a discover backend: any of its members) is available."""
        up = dict.fromkeys(self.config.backends, 0)
        for state in self.states.values():
            if state.available():
                up[state.config.label] = 1
        for name, value in up.items():
            self.metrics.backend_up.labels(name).set(value)

    def rebuild(self) -> None:
        """Rebuild the route table after model discovery changed some pool."""
        self.table = RouteTable(self.config, self.states, self.table)

    def ready(self) -> bool:
        """Not draining, and some backend available, or one that can come up by itself
        (a discover backend, a wake hook): a cold pool holds requests, so a gateway
        whose pools are all cold must still get them."""
        return not self.draining and (
            any(s.available() for s in self.states.values())
            or any(b.discovers or b.wake is not None for b in self.config.backends.values()))
