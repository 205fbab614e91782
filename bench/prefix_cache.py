"""Prefix-cache hit ratio per routing strategy, on a replay of multi-turn chats.

Simulated backends keep an LRU prefix cache of 16-token blocks (as vLLM's
automatic prefix caching does): a request reuses the longest run of leading
blocks its backend still holds, and its hit ratio is matched tokens / prompt
tokens. Conversations share a handful of system prompts, open with a question
that often carries a pasted document, then alternate assistant replies and
follow-ups; they start at random times, so many are interleaved and several
requests are in flight at once. A few very hot prefixes (one system prompt and
one opening question that many short conversations share, arriving in bursts)
test that one hot key cannot overload a backend. Each strategy is driven through
its real class, with in-flight counts kept by a discrete-event simulation of
request durations.

The oracle knows every backend's cache: it sends each request to the backend
holding the longest cached prefix of its prompt, under the same load bound as
`prefix_affinity` (no backend above ceil(1.25 x its share of what is in flight)).
Each strategy's hit ratio is reported as a fraction of the oracle's on the same
replay; the goal for `prefix_affinity` is >= 0.95 of it at max/mean load <= 1.25.

Run from the repository root: `python -m bench.prefix_cache` (or the file path).
Prints a table and writes bench/results/prefix_cache.json.
"""

from __future__ import annotations

import heapq
import json
import random
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

if __package__ in (None, ""):      # run as a file: make the gateway package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.endpoints import BY_NAME  # noqa: E402
from gateway.routing import make_strategy  # noqa: E402
from gateway.routing.prefix_affinity import PrefixAffinity  # noqa: E402

CHAT = BY_NAME["chat"]

SEED = 20240611
BLOCK = 16                          # tokens per cached block
PARAMS = {
    "seed": SEED,
    "backends": 4,
    "conversations": 200,
    "system_prompts": 10,
    "turns": [3, 8],
    "hot_prefixes": 3,                     # shared (system prompt, opening question) roots
    "hot_conversations": 120,              # short conversations on those roots, in bursts
    "hot_turns": [1, 3],
    "hot_burst_s": 20.0,
    "block_tokens": BLOCK,
    "cache_blocks_per_backend": 2048,      # 32k tokens, a few conversations' worth
    "arrival_window_s": 600.0,
    "think_time_mean_s": 8.0,
    "prefill_s_per_token": 0.0001,         # only uncached tokens are prefilled
    "decode_s_per_token": 0.015,
}
# The four configurable strategies, plus prefix affinity with a looser load bound
# to show what the default c = 1.25 trades for balance.
STRATEGIES = {
    "weighted": lambda: make_strategy("weighted"),
    "least_busy": lambda: make_strategy("least_busy"),
    "prefix_affinity": lambda: make_strategy("prefix_affinity"),
    "session_affinity": lambda: make_strategy("session_affinity"),
    "prefix_affinity c=2": lambda: PrefixAffinity(load_factor=2.0),
}
LOAD_FACTOR = Fraction(5, 4)        # the oracle's load bound: prefix_affinity's default c
GOAL_OF_ORACLE = 0.95
GOAL_MAX_MEAN = 1.25
RESULTS = Path(__file__).resolve().parent / "results" / "prefix_cache.json"


# -- workload -----------------------------------------------------------------

@dataclass
class Turn:
    user: list[int]            # the user message's tokens
    reply: list[int]           # the assistant reply's tokens


@dataclass
class Conversation:
    cid: int
    system: list[int]
    system_id: int
    start: float
    turns: list[Turn]
    root: str = ""             # the opening question's text; shared by a hot prefix


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(32_000) for _ in range(n)]


def make_workload(rng: random.Random) -> list[Conversation]:
    systems = [_tokens(rng, rng.randint(150, 600)) for _ in range(PARAMS["system_prompts"])]
    low, high = PARAMS["turns"]
    convs = []
    for cid in range(PARAMS["conversations"]):
        sid = rng.randrange(len(systems))
        turns = []
        for t in range(rng.randint(low, high)):
            # The opening question often carries a document or code (RAG, "explain this").
            user_len = rng.randint(300, 2500) if t == 0 and rng.random() < 0.7 else rng.randint(20, 250)
            turns.append(Turn(_tokens(rng, user_len), _tokens(rng, rng.randint(50, 500))))
        start = rng.uniform(0, PARAMS["arrival_window_s"])
        convs.append(Conversation(cid, systems[sid], sid, start, turns, f"conv {cid} user 0"))
    return convs + _hot_conversations(rng, systems, len(convs))


def _hot_conversations(rng: random.Random, systems: list[list[int]],
                       first_cid: int) -> list[Conversation]:
    """Many short conversations opening with the same question on the same system prompt
    (a popular template, a shared document), each root's arrivals in one burst."""
    low, high = PARAMS["hot_turns"]
    roots = []
    for h in range(PARAMS["hot_prefixes"]):
        sid = rng.randrange(len(systems))
        roots.append((sid, _tokens(rng, rng.randint(800, 2000)),
                      rng.uniform(0, PARAMS["arrival_window_s"] - PARAMS["hot_burst_s"])))
    convs = []
    for i in range(PARAMS["hot_conversations"]):
        h = i % len(roots)
        sid, opening, burst = roots[h]
        turns = [Turn(list(opening), _tokens(rng, rng.randint(50, 300)))]
        turns += [Turn(_tokens(rng, rng.randint(20, 200)), _tokens(rng, rng.randint(50, 300)))
                  for _ in range(rng.randint(low, high) - 1)]
        start = burst + rng.uniform(0, PARAMS["hot_burst_s"])
        convs.append(Conversation(first_cid + i, systems[sid], sid, start, turns,
                                  f"hot {h} user 0"))
    return convs


def prompt_tokens(conv: Conversation, turn: int) -> list[int]:
    tokens = list(conv.system)
    for i in range(turn):
        tokens += conv.turns[i].user + conv.turns[i].reply
    return tokens + conv.turns[turn].user


def chat_body(conv: Conversation, turn: int) -> dict:
    """The OpenAI body of this turn, for prefix_key (token ids stand in for text)."""
    messages = [{"role": "system", "content": f"system prompt {conv.system_id}"}]
    for i in range(turn + 1):
        text = conv.root if i == 0 else f"conv {conv.cid} user {i}"
        messages.append({"role": "user", "content": text})
        if i < turn:
            messages.append({"role": "assistant", "content": f"conv {conv.cid} reply {i}"})
    return {"messages": messages}


def block_hashes(tokens: list[int]) -> list[int]:
    """Chained hashes of the full blocks: a block matches only with all blocks before it."""
    hashes, prev = [], 0
    for i in range(0, len(tokens) - BLOCK + 1, BLOCK):
        prev = hash((prev, tuple(tokens[i:i + BLOCK])))
        hashes.append(prev)
    return hashes


# -- simulated backends -------------------------------------------------------

@dataclass(eq=False)
class SimBackend:
    name: str
    weight: float = 1.0
    in_flight: int = 0
    served: int = 0
    cache: OrderedDict = field(default_factory=OrderedDict)
    ewma_ttft: float | None = None
    service_time: float | None = None
    batch: int = 0
    signal: str = "not_exposed"

    @property
    def load(self) -> int:     # what strategies read: no engine reading here
        return self.in_flight

    def lookup(self, blocks: list[int]) -> int:
        """Leading blocks already cached (touched as used)."""
        matched = 0
        for block in blocks:
            if block not in self.cache:
                break
            self.cache.move_to_end(block)
            matched += 1
        return matched

    def peek(self, blocks: list[int]) -> int:
        """Leading blocks cached, without touching them (what the oracle looks at)."""
        matched = 0
        for block in blocks:
            if block not in self.cache:
                break
            matched += 1
        return matched

    def store(self, blocks: list[int]) -> None:
        cache = self.cache
        for block in blocks:
            cache[block] = None
            cache.move_to_end(block)
        while len(cache) > PARAMS["cache_blocks_per_backend"]:
            cache.popitem(last=False)


class Oracle:
    """Knows every backend's cache: the longest cached prefix wins, under the load bound."""

    def pick(self, backends: list[SimBackend], blocks: list[int]) -> SimBackend:
        total_load = 1 + sum(b.in_flight for b in backends)    # +1: the request placed now
        cap = -(-LOAD_FACTOR.numerator * total_load // (LOAD_FACTOR.denominator * len(backends)))
        room = [b for b in backends if b.in_flight < cap]
        return max(room, key=lambda b: (b.peek(blocks), -b.in_flight, b.name))


# -- replay -------------------------------------------------------------------

def replay(strategy, convs: list[Conversation], rng: random.Random) -> dict:
    backends = [SimBackend(f"b{i}") for i in range(PARAMS["backends"])]
    # Events: (time, seq, kind, conversation, turn, backend); seq keeps ties ordered.
    events: list = [(c.start, c.cid, "send", c, 0, None) for c in convs]
    heapq.heapify(events)
    seq = len(convs)
    ratios, matched_total, prompt_total, peak = [], 0, 0, 0
    last: dict[int, SimBackend] = {}
    follow_ups = same = 0
    while events:
        now, _, kind, conv, turn, backend = heapq.heappop(events)
        if kind == "done":
            backend.in_flight -= 1
            tokens = prompt_tokens(conv, turn) + conv.turns[turn].reply
            backend.store(block_hashes(tokens))       # the reply's KV is cached too
            if turn + 1 < len(conv.turns):
                think = rng.expovariate(1 / PARAMS["think_time_mean_s"])
                seq += 1
                heapq.heappush(events, (now + think, seq, "send", conv, turn + 1, None))
            continue
        tokens = prompt_tokens(conv, turn)
        blocks = block_hashes(tokens)
        if isinstance(strategy, Oracle):
            backend = strategy.pick(backends, blocks)
        else:
            # What the gateway does: the strategy keys the request, then picks.
            request = strategy.route_key(CHAT, chat_body(conv, turn),
                                         {"X-Session-ID": f"conv-{conv.cid}"})
            backend = strategy.pick(backends, request)
        if turn:
            follow_ups += 1
            same += last[conv.cid] is backend
        last[conv.cid] = backend
        matched = backend.lookup(blocks) * BLOCK
        backend.store(blocks)
        backend.in_flight += 1
        backend.served += 1
        peak = max(peak, sum(b.in_flight for b in backends))
        ratios.append(matched / len(tokens))
        matched_total += matched
        prompt_total += len(tokens)
        duration = ((len(tokens) - matched) * PARAMS["prefill_s_per_token"]
                    + len(conv.turns[turn].reply) * PARAMS["decode_s_per_token"])
        seq += 1
        heapq.heappush(events, (now + duration, seq, "done", conv, turn, backend))
    served = [b.served for b in backends]
    return {
        "requests": len(ratios),
        "hit_ratio": sum(ratios) / len(ratios),
        "token_hit_ratio": matched_total / prompt_total,
        "served": served,
        "max_mean_load": max(served) / (sum(served) / len(served)),
        "same_backend": same / follow_ups,      # follow-up turns on the previous turn's backend
        "peak_in_flight": peak,
    }


def describe(convs: list[Conversation]) -> str:
    requests = sum(len(c.turns) for c in convs)
    distinct = sum(len(prompt_tokens(c, len(c.turns) - 1)) + len(c.turns[-1].reply)
                   for c in convs)
    cache = PARAMS["cache_blocks_per_backend"] * BLOCK * PARAMS["backends"]
    return (f"{len(convs)} conversations, {requests} requests, {PARAMS['backends']} backends; "
            f"all caches together hold {cache / distinct:.0%} of the replay's context tokens")


def main() -> None:
    started = time.perf_counter()
    convs = make_workload(random.Random(SEED))
    factories = {**STRATEGIES, "oracle": Oracle}
    results = {name: replay(factory(), convs, random.Random(SEED + 1))
               for name, factory in factories.items()}
    base, best = results["weighted"]["hit_ratio"], results["oracle"]["hit_ratio"]
    for res in results.values():
        res["vs_weighted"] = res["hit_ratio"] / base
        res["of_oracle"] = res["hit_ratio"] / best
    print(describe(convs))
    print(f"{'strategy':<21}{'hit ratio':>10}{'token hit':>10}{'x weighted':>11}"
          f"{'of oracle':>10}{'max/mean':>9}{'same backend':>13}{'peak in flight':>15}")
    for name, res in results.items():
        print(f"{name:<21}{res['hit_ratio']:>10.3f}{res['token_hit_ratio']:>10.3f}"
              f"{res['vs_weighted']:>11.2f}{res['of_oracle']:>10.3f}{res['max_mean_load']:>9.3f}"
              f"{res['same_backend']:>13.3f}{res['peak_in_flight']:>15}")
    pa = results["prefix_affinity"]
    met = pa["of_oracle"] >= GOAL_OF_ORACLE and pa["max_mean_load"] <= GOAL_MAX_MEAN
    print(f"goal: prefix_affinity >= {GOAL_OF_ORACLE:.2f} of the oracle's hit ratio at "
          f"max/mean <= {GOAL_MAX_MEAN}: {pa['of_oracle']:.3f} at {pa['max_mean_load']:.3f} "
          f"-> {'met' if met else 'NOT met'}")
    elapsed = time.perf_counter() - started
    print(f"({elapsed:.1f}s)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"params": PARAMS, "results": results,
                                   "elapsed_s": round(elapsed, 2)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
