"""Least latency: power of two choices on each backend's time to first token and load.

Two distinct candidates are drawn at random and the one with the lower expected wait
takes the request:

    cost = ewma_ttft * (load + 1) / weight

`ewma_ttft` is the moving average of the backend's recent times to first token per unit
of the load it had when each was sent (fed by the dispatcher as answers start: a queued
first token says the queue was long, and the load below already counts the queue),
`load` the blended load of `Candidate.load` (the
gateway's in-flight count with the runtime's own running + waiting while fresh), +1 for
the request being placed. A fast server takes more traffic until its queue makes it as
slow as the others; a slow one still gets a share once the fast one is busy, so its
average stays current. A backend with no answer yet is taken to be as fast as the one it
is compared with, so it is tried without being flooded.

Two random choices instead of the global minimum: every gateway (and every worker)
would pick the same "best" backend between two load readings and pile onto it;
comparing two random ones spreads that herd while still avoiding the worst
(Mitzenmacher 2001; Finagle's and Linkerd's P2C balancers).
"""

from __future__ import annotations

import random
from typing import Sequence

from . import Candidate, KeysOnNothing, RouteRequest


class LeastLatency(KeysOnNothing):
    name = "least_latency"
    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, candidates: Sequence[Candidate],
             request: RouteRequest | None = None) -> Candidate:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        rng = self._rng
        if n == 2:
            a, b = candidates
        else:
            i = rng.randrange(n)
            j = rng.randrange(n - 1)
            a, b = candidates[i], candidates[j + (j >= i)]
        return self._better(a, b)

    def _better(self, a: Candidate, b: Candidate) -> Candidate:
        ttft_a, ttft_b = a.ewma_ttft, b.ewma_ttft
        if ttft_a is None:
            ttft_a = ttft_b if ttft_b is not None else 1.0
        if ttft_b is None:
            ttft_b = ttft_a
        # a's cost < b's cost, cross-multiplied: no division by a weight.
        lhs = ttft_a * (a.load + 1) * b.weight
        rhs = ttft_b * (b.load + 1) * a.weight
        if lhs != rhs:
            return a if lhs < rhs else b
        # A tie (two idle backends never measured): by weight, at random.
        return a if self._rng.random() * (a.weight + b.weight) < a.weight else b
