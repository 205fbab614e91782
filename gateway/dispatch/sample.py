"""Picks in large pools (a discover backend's many members) at the cost of small ones.

A full pick looks at every backend of the stage: which are free, then the strategy
over all of them. With 50 members that is 25 times the work of 2 backends, on every
request. In a stage of more than SAMPLE_ABOVE backends of which some are discovered
members, a pick looks at CHOICES of them only (a pool of configured backends alone keeps
the full pick, and `weighted` its exact smooth round-robin):

    weighted       members of equal weight (one discover backend): round-robin, the
                   next free of the next two; else the first free of two drawn at random
                   in proportion to weight
    least_busy, least_latency   two drawn at random in proportion to weight; least_busy
                   takes the less loaded per weight (the power of two choices),
                   least_latency its own two-choice rule on the pair
    prefix_affinity, session_affinity     the key's first owners clockwise on a hash ring
        over the whole stage (the same ring construction as routing/ring.py), skipping
        those not free; the first unless it holds more than its bounded share of the
        pair's load (the second takes the spill, as the full ring's walk would)

A backend put to sleep (`BackendState.asleep`: vLLM's sleep mode) is not free here. When none
of the looked-at backends is free (at capacity, ejected, tried, asleep), the full pick
runs as before; so it does always in a stage with backends that report which models
they hold (Ollama: its preference needs them all). The sampler of a stage is built
once per route table and capability.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from enum import Enum
from fractions import Fraction

from ..config import EngineConfig
from ..routing import RouteRequest, Strategy
from ..routing.ring import HashRing, hash_point, vnode_points
from ..routing.weighted import int_weight
from .backend import BackendState

AFFINITY = ("prefix_affinity", "session_affinity")


class Rule(Enum):
    """How a sampler picks, from its route's strategy (`Sampler.rule`)."""

    ROUND_ROBIN = "round robin"     # weighted, members of equal weight
    FIRST = "first free of two"     # weighted, weights that differ: drawn by weight
    LESS_LOADED = "less loaded"     # least_busy (and any strategy without a rule of its own)
    STRATEGY = "the strategy's"     # least_latency: its own rule on the pair
    PREFIX = "prefix key"
    SESSION = "session key"


# Module names for the members: a pick compares them without a class attribute lookup.
ROUND_ROBIN, FIRST, LESS_LOADED, STRATEGY, PREFIX, SESSION = Rule
_RULES = {"least_busy": LESS_LOADED, "least_latency": STRATEGY,
          "prefix_affinity": PREFIX, "session_affinity": SESSION}
SAMPLE_ABOVE = 4
CHOICES = 2
RING_WALK = 8          # owners looked at for a key before the full pick takes over
LOAD_FACTOR = Fraction(5, 4)   # the affinity strategies' bound (routing/ring.py)
# Kinds whose runtime says which models it holds in memory (dispatch/cold.prefer_loaded).
KINDS_WITH_LOADED_MODELS = frozenset({"ollama"})


RING_STORE_SIZE = 16    # member sets whose rings are kept (a few pools, a few changes)


class RingStore:
    """Hash rings by member set, built once (off the request path when discovery warms
    them: `Sampler.prepare`) and shared by every table and stage that has that set."""

    __slots__ = ("_rings", "_points")

    def __init__(self) -> None:
        self._rings: dict[tuple[tuple[str, float], ...], HashRing] = {}
        self._points: dict[tuple[str, float], tuple[int, ...]] = {}

    def ring(self, backends: tuple[BackendState, ...]) -> HashRing:
        key = tuple((b.name, b.weight) for b in backends)
        ring = self._rings.get(key)
        if ring is None:
            points = self._points
            members = {}
            for name, weight in key:
                found = points.get((name, weight))
                if found is None:
                    found = points[(name, weight)] = vnode_points(name, weight)
                members[name] = found
            if len(self._rings) >= RING_STORE_SIZE:
                del self._rings[next(iter(self._rings))]   # the oldest
                live = {m for k in self._rings for m in k} | set(key)
                for gone in [m for m in points if m not in live]:
                    del points[gone]
            ring = self._rings[key] = HashRing(members)
        return ring


class Sampler:
    __slots__ = ("backends", "rule", "_cumulative", "_total", "uniform", "_ring", "_rings",
                 "_by_name", "_random", "applies", "cursor")

    def __init__(self, backends: tuple[BackendState, ...], strategy: str = "",
                 rings: RingStore | None = None) -> None:
        self.backends = backends
        self._rings = rings
        total, cumulative = 0, []
        for b in backends:
            total += int_weight(b.weight)
            cumulative.append(total)
        self._cumulative, self._total = cumulative, total
        self.uniform = len({b.weight for b in backends}) == 1
        self.rule = ((ROUND_ROBIN if self.uniform else FIRST) if strategy == "weighted"
                     else _RULES.get(strategy, LESS_LOADED))
        self.cursor = 0   # weighted's round-robin over members of equal weight
        self._ring: HashRing | None = None
        self._by_name = {b.name: b for b in backends}
        self._random = random.Random().random
        self.applies = (any(b.config.member_of is not None for b in backends)
                        and not any(b.config.kind in KINDS_WITH_LOADED_MODELS
                                    for b in backends))

    def draw(self) -> tuple[BackendState, BackendState]:
        """Two backends at random, each in proportion to weight: one draw, and the point
        half the total weight on (distinct unless one backend holds half the weight).
        A discover backend's members all have its weight: then an index does."""
        backends = self.backends
        if self.uniform:
            n = len(backends)
            i = int(self._random() * n)
            return backends[i], backends[(i + n // 2) % n]
        cum, total = self._cumulative, self._total
        point = self._random() * total
        half = point + total / 2
        return (backends[bisect_right(cum, point)],
                backends[bisect_right(cum, half - total if half >= total else half)])

    def prepare(self) -> HashRing:
        """The ring over the stage's backends (built now if not yet)."""
        ring = self._ring
        if ring is None:
            ring = self._ring = (self._rings or RingStore()).ring(self.backends)
        return ring

    def owners(self, key: bytes):
        """The key's owners clockwise on the stage's ring."""
        ring = self._ring or self.prepare()
        by_name = self._by_name
        for name in ring.walk(hash_point(key)):
            yield by_name[name]


def sampled_pick(sampler: Sampler, strategy: Strategy, tried: set[str],
                 route: RouteRequest, engine: EngineConfig, now: float
                 ) -> BackendState | None:
    """A backend by looking at CHOICES of the stage's; None: run the full pick."""
    rule = sampler.rule
    if rule is PREFIX or rule is SESSION:
        key = route.prefix if rule is PREFIX else (
            route.session.encode("utf-8", "surrogatepass") if route.session else None)
        if key is not None:
            return _by_key(sampler, key, tried, engine, now)
    elif rule is ROUND_ROBIN:
        return _round_robin(sampler, tried, engine, now)
    a, b = sampler.draw()
    a_free = _free(a, tried, engine, now)
    b_free = b is not a and _free(b, tried, engine, now)
    if not (a_free and b_free):
        return a if a_free else b if b_free else None
    if rule is FIRST:
        return a
    if rule is STRATEGY:
        return strategy.pick((a, b), route)   # type: ignore[return-value]
    # least_busy, and any strategy without a keyed rule: the less loaded per weight.
    return a if a.load * int_weight(b.weight) <= b.load * int_weight(a.weight) else b


def _round_robin(sampler: Sampler, tried: set[str], engine: EngineConfig,
                 now: float) -> BackendState | None:
    backends, start = sampler.backends, sampler.cursor
    n = len(backends)
    for step in range(CHOICES):
        backend = backends[(start + step) % n]
        if _free(backend, tried, engine, now):
            sampler.cursor = (start + step + 1) % n
            return backend
    sampler.cursor = (start + CHOICES) % n
    return None


def _by_key(sampler: Sampler, key: bytes, tried: set[str], engine: EngineConfig,
            now: float) -> BackendState | None:
    found: list[BackendState] = []
    for looked, backend in enumerate(sampler.owners(key)):
        if looked >= RING_WALK:
            break
        if _free(backend, tried, engine, now):
            found.append(backend)
            if len(found) == CHOICES:
                break
    if len(found) < CHOICES:
        return found[0] if found else None
    first, second = found
    w1, w2 = int_weight(first.weight), int_weight(second.weight)
    load = first.load
    # Bounded loads over the pair: the first's share of (both loads + this request).
    cap = -(-LOAD_FACTOR.numerator * (load + second.load + 1) * w1
            // (LOAD_FACTOR.denominator * (w1 + w2)))
    return first if load < cap else second


def _free(backend: BackendState, tried: set[str], engine: EngineConfig, now: float) -> bool:
    """What the full pick asks of a backend it may hand to the strategy (healthy, not
    tried, not ejected or cooling, below its cap, not saturated), and awake; written
    out, as this runs twice per pick."""
    if (not backend.healthy or now < backend.ejected_until or now < backend.cooling_until
            or backend.name in tried):
        return False
    cap = backend.config.max_concurrency
    if cap is not None and backend.in_flight >= cap:
        return False
    view = backend.engine
    if view.reading is None or now >= view.expires_at:
        return True   # no fresh reading: neither saturated nor asleep by it
    return not backend.saturated(now, engine) and not backend.asleep(now)


# The capabilities whose stages' rings discovery builds ahead of the first request.
WARM_CAPABILITIES = ("chat", "completions")


def warm_rings(table) -> None:
    """Build the hash rings of every large affinity pool with members now, so that the
    first keyed request after a membership change does not (50 members: ~25 ms)."""
    for pool in table.pools.values():
        if getattr(pool.strategy, "name", "") not in AFFINITY:
            continue
        for stage in table.stages(pool):
            for capability in WARM_CAPABILITIES:
                capable = stage.capable(capability)
                if len(capable) > SAMPLE_ABOVE:
                    sampler = stage.sampler(capable)
                    if sampler.applies:
                        sampler.prepare()
