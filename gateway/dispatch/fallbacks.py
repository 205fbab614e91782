"""The order a request walks: its model's pool first, then each fallback of its route.

A fallback is another backend that also lists the model (`backend:`), or another
public model's whole pool (`model:`). Each step is a `Stage`; stages are built once
per route table, so a request does no work on them but walk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..config import Config
from .backend import BackendState
from .pool import Pool
from .sample import RingStore, Sampler


@dataclass(slots=True)
class Stage:
    """One step of a request's walk: the pool itself, then each fallback."""

    public: str                         # the public model name this stage serves
    pool: Pool
    backends: tuple[BackendState, ...]
    tries: int                          # backends of this stage a request may try
    fallback_to: str | None = None      # label for gateway_fallbacks_total{to}
    _capable: dict[str, tuple[BackendState, ...]] = field(default_factory=dict)
    _samplers: list[Sampler] = field(default_factory=list)
    rings: RingStore | None = None      # the table's, shared by its stages

    def capable(self, capability: str) -> tuple[BackendState, ...]:
        """The backends that can serve `capability` (computed once per table)."""
        found = self._capable.get(capability)
        if found is None:
            found = self._capable[capability] = tuple(
                b for b in self.backends if b.config.capabilities.get(capability))
        return found

    def sampler(self, capable: tuple[BackendState, ...]) -> Sampler:
        """Large pools' picks look at a few backends (sample.py): one sampler per
        capable set of this stage, built once per table; a narrower set (a plan's)
        gets one of its own each time."""
        for sampler in self._samplers:
            if sampler.backends is capable:
                return sampler
        sampler = Sampler(capable, getattr(self.pool.strategy, "name", ""), self.rings)
        if any(c is capable for c in self._capable.values()):
            self._samplers.append(sampler)
        return sampler


def build_stages(config: Config, pool: Pool, pools: Mapping[str, Pool],
                 states: Mapping[str, BackendState],
                 rings: RingStore | None = None) -> tuple[Stage, ...]:
    """The pool with 1 + retries.attempts tries, then each fallback that exists."""
    attempts = config.retries.attempts
    stages = [Stage(pool.model, pool, pool.backends, 1 + attempts)]
    for fb in pool.fallbacks:
        if fb.backend is not None:
            # A discover backend as the fallback: its members, one try among them.
            members = tuple(s for s in states.values() if s.config.label == fb.backend)
            if members:
                stages.append(Stage(pool.model, pool, members, 1, fb.backend))
        elif fb.model is not None:
            target = pools.get(fb.model)
            if target is not None:
                stages.append(Stage(fb.model, target, target.backends, 1 + attempts,
                                    fb.model))
    for stage in stages:
        stage.rings = rings
    return tuple(stages)
