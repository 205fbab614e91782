"""Smooth weighted round-robin, the nginx way.

Every pick adds each candidate's weight to its running "current weight", takes
the candidate whose current weight is highest and charges it the pool's total.
The sequence repeats every W = sum(weights) picks and holds each backend exactly
weight times per period, so any W consecutive picks match the weights exactly,
and heavy backends are interleaved with light ones instead of bunched.
"""

from __future__ import annotations

from typing import Sequence

from . import Candidate, KeysOnNothing, RouteRequest

# Weights are compared in thousandths as integers: float sums would drift over
# millions of picks and break the exact period; SWRR is scale invariant, so
# (0.5, 1.5) behaves exactly like (1, 3).
WEIGHT_SCALE = 1000


def int_weight(weight: float) -> int:
    """A weight in thousandths, at least 1 so a tiny weight is never starved to zero."""
    return max(1, round(weight * WEIGHT_SCALE))


class WeightedRoundRobin(KeysOnNothing):
    """Smooth weighted round-robin with per-backend state keyed by name.

    The candidate set may change between calls (a backend unhealthy or already
    tried): absent backends keep their current weight, so a backend that comes
    back resumes its place instead of being picked in a burst or starved.
    """

    name = "weighted"
    uses_load = False
    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def pick(self, candidates: Sequence[Candidate],
             request: RouteRequest | None = None) -> Candidate:
        current = self._current
        total = 0
        best = candidates[0]
        best_current = None
        for cand in candidates:
            weight = int_weight(cand.weight)
            total += weight
            value = current.get(cand.name, 0) + weight
            current[cand.name] = value
            if best_current is None or value > best_current:
                best, best_current = cand, value
        current[best.name] = best_current - total
        if len(current) > 2 * len(candidates) + 8:
            self._forget_absent(candidates)
        return best

    def _forget_absent(self, candidates: Sequence[Candidate]) -> None:
        # Only reached when many names were seen that are not candidates now,
        # e.g. backends removed by config reloads; keeps the state bounded.
        present = {cand.name for cand in candidates}
        for name in [n for n in self._current if n not in present]:
            del self._current[name]
