"""Least latency: power of two choices on each backend's predicted time to answer.

The model (the runtimes' fixed-size batch as a small queue). A runtime runs up to
`batch` requests at once (vLLM's `max_num_seqs`, SGLang's running batch, llama-server's
`-np` slots) and queues the rest first come first served. One request alone on a batch
takes `service` seconds end to end: its time to first token plus its time per output
token times its tokens. A request placed on a backend that is busy with `n` others waits
for `n + 1 - batch` of them to leave, `batch` at a time, before it starts:

    predicted = service * max(1, (n + 1) / batch)

and the backend with the lower `predicted / weight` takes the request. Below its batch a
backend costs its own speed, so a fast server takes the traffic until its queue makes it
as slow as the others; past its batch each extra request costs a batch's share of a
service time, not a whole one, so a fast server of 4 slots with 8 requests on it (a new
one ends after 9/4 of its service time) still wins over an idle one 3x slower. Where those
two lines cross the latencies are equal: the split that gives the lowest p99. Two
backends that both have room in their batch and predictions within CLOSE (10%) of each
other are a tie, which goes to the one with fewer requests per weight (least_busy's
rule): identical runtimes differ in measured speed by noise only, and a continuous batch
does slow a little as it fills. Where a queue is predicted the prediction decides: a
request queued on the slower runtime waits out a whole round of its batch.

Where each term comes from, and how old it may be:

- `n`: `Candidate.load`, the runtime's own running + waiting from its last reading
  (other clients and other gateway replicas included), moved by what this gateway sent or
  finished since; the gateway's own in-flight count alone once the reading is older than
  `engine.stale_after_s` or when the kind exposes none (`Candidate.signal`; the
  dispatcher counts it in `gateway_routing_signal_fallbacks_total`, and the trace and
  `X-Gateway-Route` name it: dispatch/decision.py).
- `batch`: the most requests the runtime has reported running (`EngineView.batch`): while
  requests wait, the batch is full, so the largest running count seen is the batch size
  once the runtime has been busy once; a lower bound before that, which only makes the
  estimate cautious. llama.cpp lists its slots (`/slots`): their number is the batch.
  Without any reading it is 1, and the cost is Peak-EWMA's `latency * (outstanding + 1)`
  (Finagle, Linkerd), which counts every request ahead as a whole service time.
- `service`: what one request takes in the batch, its time to first token plus its time
  per output token times its tokens. Where the runtime measures it (vLLM's
  `e2e_request_latency_seconds` less `request_queue_time_seconds`, sums and counts
  between two readings: every client's requests, and known from the first reading after
  a gateway restart), that (`EngineView.service`); else a moving average of the gateway's
  own measurements, each answer's time from sending to its end (streams: their last
  event), divided by the queue factor `max(1, busy / batch)` of the load it was sent into,
  so a wait in the runtime's queue is not taken for slowness (it would be counted twice:
  by the average and by `n`). A backend not measured yet is taken to be as fast as the
  one it is compared with, so it is tried without being flooded; two unmeasured ones
  compare by queue factor alone.

Two random choices instead of the global minimum: every gateway (and every worker)
would pick the same "best" backend between two load readings and pile onto it;
comparing two random ones spreads that herd while still avoiding the worst
(Mitzenmacher 2001; Finagle's and Linkerd's P2C balancers). With two candidates both are
compared. llm-d's predicted-latency scorer goes further (a model of TTFT and TPOT trained
on the runtime's histograms, per prompt length); this one needs only the answers'
timing, and uses the running and waiting counts and the time-in-batch where the kind
exposes them.
"""

from __future__ import annotations

import random
from typing import Sequence

from . import Candidate, KeysOnNothing, RouteRequest


# Predictions closer than this (relative) are a tie when neither backend has a queue,
# settled by load: the service times of identical runtimes differ by noise, not speed.
CLOSE = 0.1


def queue_factor(load: float, batch: int) -> float:
    """How many service times a request placed behind `load` others takes to finish."""
    return max(1.0, (load + 1) / max(1, batch))


def predicted(service: float | None, factor: float, weight: float) -> float:
    """Seconds until an answer placed now would end, per unit of weight; `service` the
    time one request takes alone (None: unknown, the queue factor alone)."""
    return (1.0 if service is None else service) * factor / weight


class LeastLatency(KeysOnNothing):
    name = "least_latency"
    uses_load = True
    __slots__ = ("_rng", "last")

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        # The two compared in the last pick, with their predictions: for the explanation
        # (read right after the pick, before any other pick can run).
        self.last: tuple[tuple[str, float], ...] = ()

    def pick(self, candidates: Sequence[Candidate],
             request: RouteRequest | None = None) -> Candidate:
        n = len(candidates)
        if n == 1:
            self.last = ()
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
        sa, sb = a.service_time, b.service_time
        load_a, load_b = a.load, b.load
        fa, fb = queue_factor(load_a, a.batch), queue_factor(load_b, b.batch)
        cost_a = predicted(sa if sa is not None else sb, fa, a.weight)
        cost_b = predicted(sb if sb is not None else sa, fb, b.weight)
        self.last = ((a.name, cost_a), (b.name, cost_b))
        # Both below their batch (no queue on either) and as fast as each other within
        # CLOSE: a tie. Identical runtimes differ in measured speed by noise only.
        tie = cost_a == cost_b or (fa == 1 == fb and abs(cost_a - cost_b)
                                   <= CLOSE * max(cost_a, cost_b))
        if not tie:
            return a if cost_a < cost_b else b
        # A tie goes to the one with fewer requests per weight, as least_busy: a
        # continuous batch slows every request in it a little as it fills, which the
        # fixed-batch model leaves out.
        diff = load_a * b.weight - load_b * a.weight
        if diff:
            return a if diff < 0 else b
        return a if self._rng.random() * (a.weight + b.weight) < a.weight else b
