"""The route table: each public model's pool of backends, strategy and fallbacks.

A `RouteTable` is an immutable snapshot built from a Config and the live
`BackendState`s; a reload or a model discovery builds a new one and swaps it in
one step, so a request keeps the table it started with, and reads every setting
(retries, queue, health) from that table's config: one snapshot from start to end. `bound` gives a backend's settings and transport as of
the snapshot, not as of the latest reload.
"""

from __future__ import annotations

from typing import Mapping

from ..config import BackendConfig, Config
from ..routing import Strategy, make_strategy
from ..runtimes import Runtime
from .backend import BackendState
from .fallbacks import Stage, build_stages
from .pool import Pool
from .sample import RingStore


class RouteTable:
    def __init__(self, config: Config, states: Mapping[str, BackendState],
                 previous: RouteTable | None = None) -> None:
        self.config = config
        self.states = states
        # Each backend's settings and transport as this snapshot has them: a reload
        # gives the kept BackendStates new ones, and a request that started before it
        # still sends every try (headers, api_key, timeouts, model names) with these.
        self._bound: Mapping[str, tuple[BackendConfig, Runtime]] = {
            name: (state.config, state.runtime) for name, state in states.items()}
        members: dict[str, list[BackendState]] = {}
        sources: dict[str, dict[str, BackendConfig]] = {}
        for state in states.values():   # in config order, a backend's members in its place
            for model in state.serves():
                members.setdefault(model, []).append(state)
                sources.setdefault(model, {})[state.config.label] = \
                    config.backends[state.config.label]
        for backend in config.backends.values():
            # A discover backend with no member yet still makes its models' pools (cold).
            if backend.discovers and backend.models is not None:
                for model in backend.models:
                    members.setdefault(model, [])
                    sources.setdefault(model, {}).setdefault(backend.name, backend)
        self.pools: dict[str, Pool] = {}
        for model, backends in members.items():
            route = config.route(model)
            # A backend named as a fallback serves this model only once the pool failed.
            reserved = {fb.backend for fb in route.fallbacks if fb.backend}
            backends = [b for b in backends if b.config.label not in reserved]
            strategy = previous.strategy_for(model, route.strategy) if previous else None
            self.pools[model] = Pool(
                model, tuple(backends), strategy or make_strategy(route.strategy),
                route.fallbacks, tuple(c for name, c in sources[model].items()
                                       if name not in reserved))
        self.model_names = tuple(sorted(self.pools))
        self._stages: dict[str, tuple[Stage, ...]] = {}
        # Large pools' hash rings (sample.py), by their members: kept across tables, so a
        # rebuild for an unrelated change builds none again.
        self.rings: RingStore = previous.rings if previous is not None else RingStore()

    def pool(self, model: str) -> Pool | None:
        return self.pools.get(model)

    def stages(self, pool: Pool) -> tuple[Stage, ...]:
        """The pool, then its fallbacks that exist: the order a request tries them in."""
        stages = self._stages.get(pool.model)
        if stages is None:
            stages = self._stages[pool.model] = build_stages(
                self.config, pool, self.pools, self.states, self.rings)
        return stages

    def bound(self, backend: BackendState) -> tuple[BackendConfig, Runtime]:
        """`backend`'s config and runtime in this snapshot."""
        return self._bound[backend.name]

    def strategy_for(self, model: str, name: str) -> Strategy | None:
        """Keep a strategy's state (round-robin position, hash ring) across rebuilds."""
        pool = self.pools.get(model)
        if pool is not None and self.config.route(model).strategy == name:
            return pool.strategy
        return None
