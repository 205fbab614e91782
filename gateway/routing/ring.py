"""Consistent hashing with bounded loads, shared by the affinity strategies.

A key (a prompt prefix, a session) hashes to a point on a ring of virtual nodes;
its backend is the owner of the next point clockwise. Each backend owns virtual
nodes in proportion to its weight, so removing one of n backends moves only the
keys it owned (~1/n) and adding one takes ~1/(n+1) from the others.

Bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018): a backend may hold at most
ceil(c * (total_load + 1) * weight_share) requests; when the preferred
backend is full, the walk continues clockwise to the next distinct backend. A
hot key therefore spills onto the same second backend every time, which keeps
the spilled part of its traffic cache-friendly too. The load is `Candidate.load`:
the runtime's own running and waiting counts while it reports them, so a prefix
whose server is busy with other clients' work spills too.
"""

from __future__ import annotations

from bisect import bisect_right
from fractions import Fraction
from hashlib import blake2b
from typing import Iterator, Sequence

from . import Candidate
from .least_busy import LeastBusy
from .weighted import int_weight

# 160 points per unit of weight keeps each backend's share of the ring within a
# few percent of its weight (the spread shrinks as 1/sqrt(points)).
VNODES_PER_WEIGHT = 160
MAX_VNODES = 16_384
RING_CACHE_SIZE = 16      # the full pool plus the subsets retries and health produce
POINT_CACHE_SIZE = 256


def hash_point(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


def vnode_points(name: str, weight: float) -> tuple[int, ...]:
    count = min(MAX_VNODES, max(1, round(weight * VNODES_PER_WEIGHT)))
    return tuple(hash_point(f"{name}#{i}".encode()) for i in range(count))


class HashRing:
    """Sorted virtual-node points and their owners."""

    __slots__ = ("points", "owners", "size")

    def __init__(self, members: dict[str, tuple[int, ...]]) -> None:
        # Ties on a point (astronomically rare) are broken by name, so the ring
        # does not depend on the candidates' order.
        pairs = sorted((p, name) for name, points in members.items() for p in points)
        self.points = [p for p, _ in pairs]
        self.owners = [name for _, name in pairs]
        self.size = len(members)

    def walk(self, point: int) -> Iterator[str]:
        """Distinct owners in clockwise order, starting at the key's point."""
        points, owners = self.points, self.owners
        start = bisect_right(points, point)
        seen: set[str] = set()
        for i in range(len(points)):
            owner = owners[(start + i) % len(points)]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == self.size:
                    return


class RingCache:
    """Rings by candidate set, so a pick only rebuilds when the set changed."""

    __slots__ = ("_rings", "_points")

    def __init__(self) -> None:
        self._rings: dict[frozenset[tuple[str, float]], HashRing] = {}
        self._points: dict[tuple[str, float], tuple[int, ...]] = {}

    def get(self, candidates: Sequence[Candidate]) -> HashRing:
        key = frozenset((cand.name, cand.weight) for cand in candidates)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._build(key)
        return ring

    def _build(self, key: frozenset[tuple[str, float]]) -> HashRing:
        members = {}
        for member in key:
            points = self._points.get(member)
            if points is None:
                points = self._points[member] = vnode_points(*member)
            members[member[0]] = points
        if len(self._rings) >= RING_CACHE_SIZE:
            del self._rings[next(iter(self._rings))]     # the oldest: dicts keep order
        if len(self._points) > POINT_CACHE_SIZE:
            self._points.clear()     # renamed or reweighted backends must not pile up
        ring = self._rings[key] = HashRing(members)
        return ring


class BoundedAffinity:
    """Sticky by key, bounded by load; no key (or one candidate) -> least busy."""

    __slots__ = ("_rings", "_fallback", "_factor")

    def __init__(self, load_factor: float = 1.25) -> None:
        if not load_factor >= 1:
            raise ValueError(f"load_factor must be >= 1, got {load_factor!r}")
        self._rings = RingCache()
        self._fallback = LeastBusy()
        # Exact rational c, so the cap is integer arithmetic: float rounding
        # must not turn an exact 2.0 into 2.0000001 and its ceiling into 3.
        self._factor = Fraction(load_factor).limit_denominator(1000)

    def pick_by_key(self, candidates: Sequence[Candidate], key: bytes | None,
                    prefer: str | None = None) -> Candidate:
        """`prefer`: a backend to take before the ring's choice, if it is a candidate
        under the bound."""
        if len(candidates) == 1 or key is None and prefer is None:
            return self._fallback.pick(candidates)
        by_name = {}
        total_weight, total_load = 0, 1      # +1: the request being placed
        for cand in candidates:
            by_name[cand.name] = cand
            total_weight += int_weight(cand.weight)
            total_load += cand.load
        num = self._factor.numerator * total_load
        den = self._factor.denominator * total_weight
        cand = by_name.get(prefer) if prefer is not None else None
        if cand is not None and cand.load < -(-num * int_weight(cand.weight) // den):
            return cand
        if key is None:
            return self._fallback.pick(candidates)
        for name in self._rings.get(candidates).walk(hash_point(key)):
            cand = by_name[name]
            cap = -(-num * int_weight(cand.weight) // den)
            if cand.load < cap:
                return cand
        # Unreachable: the caps sum to at least c * total_load, more than is in
        # flight now, so some candidate is under its cap. A safe answer anyway.
        return self._fallback.pick(candidates)
