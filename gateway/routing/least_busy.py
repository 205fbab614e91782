"""Least busy: the candidate with the lowest load per unit of weight.

The load is the gateway's in-flight count, blended with the runtime's own running and
waiting counts while it reports them (see `Candidate.load`): other clients of the same
server, long prompts and a queue behind a full KV cache count too.
"""

from __future__ import annotations

from typing import Sequence

from . import Candidate, KeysOnNothing, RouteRequest
from .weighted import WeightedRoundRobin, int_weight


def least_loaded(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Every candidate whose load / weight is the minimum.

    Compared by cross-multiplying integers, so 1/3 and 2/6 tie exactly
    (a float division could tell them apart).
    """
    best: list[Candidate] = []
    best_load = best_weight = 0
    for cand in candidates:
        load, weight = cand.load, int_weight(cand.weight)
        if not best:
            best, best_load, best_weight = [cand], load, weight
            continue
        diff = load * best_weight - best_load * weight
        if diff < 0:
            best, best_load, best_weight = [cand], load, weight
        elif diff == 0:
            best.append(cand)
    return best


class LeastBusy(KeysOnNothing):
    """Lowest load relative to weight; ties go round-robin.

    Without the round-robin an idle pool (all at zero) would send every
    sequential request to the first backend. The tie-break is weighted, so
    sequential traffic on an idle pool still follows the weights.
    """

    name = "least_busy"
    __slots__ = ("_tiebreak",)

    def __init__(self) -> None:
        self._tiebreak = WeightedRoundRobin()

    def pick(self, candidates: Sequence[Candidate],
             request: RouteRequest | None = None) -> Candidate:
        tied = least_loaded(candidates)
        if len(tied) == 1:
            return tied[0]
        return self._tiebreak.pick(tied)
