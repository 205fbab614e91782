"""Routing strategies, tested with plain stubs: no servers, no I/O."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from gateway.config import STRATEGIES
from gateway.routing import RouteRequest, make_strategy
from gateway.routing import ring as ring_module
from gateway.routing.least_busy import LeastBusy
from gateway.routing.least_latency import LeastLatency
from gateway.endpoints import BY_NAME, BY_PATH
from gateway.routing.prefix_affinity import PROMPT_CHARS, PrefixAffinity, prefix_key
from gateway.routing.session_affinity import SessionAffinity
from gateway.routing.weighted import WeightedRoundRobin

NO_KEY = RouteRequest()


@dataclass(eq=False)
class Stub:
    name: str
    weight: float = 1.0
    in_flight: int = 0
    ewma_ttft: float | None = None
    service_time: float | None = None
    batch: int = 0
    signal: str = "not_exposed"

    @property
    def load(self) -> int:     # no engine reading: the gateway's own count
        return self.in_flight


def pool(*weights: float) -> list[Stub]:
    return [Stub(f"b{i}", w) for i, w in enumerate(weights)]


def cap(candidates: list[Stub], chosen: Stub, c: float = 1.25) -> int:
    """The bounded-load limit for `chosen`, computed before it takes the request."""
    total = sum(cand.in_flight for cand in candidates) + 1
    share = chosen.weight / sum(cand.weight for cand in candidates)
    return math.ceil(c * total * share - 1e-9)


def picks(strategy, candidates, n, request=NO_KEY) -> list[str]:
    return [strategy.pick(candidates, request).name for _ in range(n)]


# -- weighted -------------------------------------------------------------------

@pytest.mark.parametrize("weights", [(3, 1), (5, 2, 1), (1, 1, 1), (0.5, 1.5), (2.5, 1, 0.5)])
def test_weighted_every_window_of_w_matches_weights(weights):
    backends = pool(*weights)
    total = sum(weights)
    window = round(total)
    seq = picks(WeightedRoundRobin(), backends, 20 * window)
    for start in range(len(seq) - window + 1):
        counts = Counter(seq[start:start + window])
        for b in backends:
            assert abs(counts[b.name] - b.weight * window / total) <= 1, (start, counts)


@pytest.mark.parametrize("weights", [(3, 1), (5, 2, 1), (1, 1, 1), (0.5, 1.5)])
def test_weighted_is_exact_over_its_period(weights):
    # Floats act as their integer ratio: (0.5, 1.5) is (1, 3), period 4.
    ints = [round(w * 2) for w in weights]
    period = sum(ints)
    seq = picks(WeightedRoundRobin(), pool(*weights), 10 * period)
    for start in range(len(seq) - period + 1):
        counts = Counter(seq[start:start + period])
        assert [counts[f"b{i}"] for i in range(len(ints))] == ints


def test_weighted_interleaves_instead_of_bunching():
    assert picks(WeightedRoundRobin(), pool(5, 1, 1), 7) == ["b0", "b0", "b1", "b0", "b2", "b0", "b0"]


def assert_windows_within_one(seq: list[str], backends: list[Stub]) -> None:
    total = sum(b.weight for b in backends)
    window = round(total)
    for start in range(len(seq) - window + 1):
        counts = Counter(seq[start:start + window])
        for b in backends:
            assert abs(counts[b.name] - b.weight) <= 1, (start, counts)


def test_weighted_follows_a_changing_candidate_set():
    strategy, backends = WeightedRoundRobin(), pool(3, 1, 1)
    picks(strategy, backends, 7)                        # stop mid-period on purpose
    without = picks(strategy, backends[:2], 40)         # b2 unhealthy (or already tried)
    assert set(without) == {"b0", "b1"}
    assert_windows_within_one(without, backends[:2])
    back = picks(strategy, backends, 50)                # b2 returns where it left off
    assert_windows_within_one(back, backends)
    assert Counter(back) == {"b0": 30, "b1": 10, "b2": 10}


def test_weighted_new_backend_joins_without_a_burst():
    strategy, backends = WeightedRoundRobin(), pool(1, 1, 1)
    picks(strategy, backends, 10)
    seq = picks(strategy, backends + [Stub("new")], 8)
    assert Counter(seq) == {"b0": 2, "b1": 2, "b2": 2, "new": 2}


def test_weighted_retry_subset_skips_the_tried_backend():
    strategy, backends = WeightedRoundRobin(), pool(1, 1, 1)
    first = strategy.pick(backends, NO_KEY)
    retry = strategy.pick([b for b in backends if b is not first], NO_KEY)
    assert retry is not first


def test_weighted_state_stays_bounded_when_names_churn():
    strategy = WeightedRoundRobin()
    for i in range(200):            # e.g. many reloads renaming backends
        strategy.pick([Stub(f"gen{i}-a"), Stub(f"gen{i}-b")], NO_KEY)
    assert len(strategy._current) <= 2 * 2 + 8 + 2


# -- least busy -------------------------------------------------------------------

def test_least_busy_picks_lowest_load_per_weight():
    backends = [Stub("a", 1, 2), Stub("b", 3, 3), Stub("c", 2, 1)]   # 2, 1, 0.5
    assert LeastBusy().pick(backends, NO_KEY).name == "c"
    backends[2].in_flight = 3                                          # 1.5: now b (1.0)
    assert LeastBusy().pick(backends, NO_KEY).name == "b"


def test_least_busy_exact_ties_go_round_robin_by_weight():
    backends = [Stub("a", 0.1, 1), Stub("b", 0.3, 3), Stub("c", 0.2, 5)]   # 10, 10, 25
    assert Counter(picks(LeastBusy(), backends, 40)) == {"a": 10, "b": 30}


def test_least_busy_idle_pool_spreads():
    assert Counter(picks(LeastBusy(), pool(1, 1, 1, 1), 8)) == {"b0": 2, "b1": 2, "b2": 2, "b3": 2}
    assert Counter(picks(LeastBusy(), pool(3, 1), 8)) == {"b0": 6, "b1": 2}


def test_least_busy_keeps_load_proportional_to_weight():
    strategy, backends = LeastBusy(), pool(3, 1, 2)
    for _ in range(60):
        strategy.pick(backends, NO_KEY).in_flight += 1
    assert [b.in_flight for b in backends] == [30, 10, 20]


# -- prefix_key -------------------------------------------------------------------

def key_for(endpoint: str, body: dict) -> bytes | None:
    """The prefix key of a body sent to the endpoint named `endpoint`."""
    return prefix_key(BY_NAME[endpoint].prompt_field, body)


SYSTEM = {"role": "system", "content": "You are a careful assistant. " * 20}


def chat(*messages) -> dict:
    return {"model": "m", "messages": list(messages)}


def grow(messages: list[dict], turn: int) -> list[dict]:
    return messages + [{"role": "assistant", "content": f"answer {turn}"},
                       {"role": "user", "content": f"follow-up {turn}"}]


def test_prefix_key_is_stable_across_turns_of_one_conversation():
    messages = [SYSTEM, {"role": "user", "content": "What is a KV cache?"}]
    keys = set()
    for turn in range(6):
        keys.add(key_for("chat", chat(*messages)))
        messages = grow(messages, turn)
    assert len(keys) == 1
    (key,) = keys
    assert isinstance(key, bytes) and 8 <= len(key) <= 16


def test_prefix_key_separates_conversations_sharing_a_system_prompt():
    a = key_for("chat", chat(SYSTEM, {"role": "user", "content": "question one"}))
    b = key_for("chat", chat(SYSTEM, {"role": "user", "content": "question two"}))
    c = key_for("chat", chat({"role": "system", "content": "other"},
                                {"role": "user", "content": "question one"}))
    assert len({a, b, c}) == 3


def test_prefix_key_accepts_content_parts():
    text = chat(SYSTEM, {"role": "user", "content": "describe this"})
    parts = chat({"role": "system", "content": [{"type": "text", "text": SYSTEM["content"]}]},
                 {"role": "user", "content": [{"type": "text", "text": "describe this"}]})
    image = chat(SYSTEM, {"role": "user", "content": [
        {"type": "text", "text": "describe this"},
        {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]})
    other_image = chat(SYSTEM, {"role": "user", "content": [
        {"type": "text", "text": "describe this"},
        {"type": "image_url", "image_url": {"url": "https://x/dog.png"}}]})
    assert key_for("chat", text) == key_for("chat", parts)
    keys = {key_for("chat", b) for b in (text, image, other_image)}
    assert len(keys) == 3 and None not in keys
    later = chat(*grow(image["messages"], 0))
    assert key_for("chat", later) == key_for("chat", image)


def test_prefix_affinity_route_key_reads_the_endpoint_row():
    body = chat(SYSTEM, {"role": "user", "content": "hi"})
    strategy = PrefixAffinity()
    key = strategy.route_key(BY_PATH["/v1/chat/completions"], body, {}).prefix
    assert key == prefix_key("messages", body) is not None
    assert strategy.route_key(BY_NAME["embeddings"], {"input": "x" * 1000}, {}).prefix is None


def test_session_affinity_route_key_prefers_the_header_over_user():
    strategy = SessionAffinity()
    body = {"user": "u1", "messages": []}
    assert strategy.route_key(BY_NAME["chat"], body, {"X-Session-ID": "s1"}).session == "s1"
    assert strategy.route_key(BY_NAME["chat"], body, {}).session == "u1"
    assert strategy.route_key(BY_NAME["chat"], {"user": 5}, {}).session is None


def test_prefix_key_completions_uses_the_prompt_head():
    head = "Translate to French.\n" * 20
    assert len(head) >= PROMPT_CHARS
    first = key_for("completions", {"prompt": head + "cat ->"})
    later = key_for("completions", {"prompt": head + "cat -> chat\ndog ->"})
    assert first == later is not None
    assert key_for("completions", {"prompt": "x" + head}) != first
    assert key_for("completions", {"prompt": [head + "a", "b"]}) == first   # a batch
    tokens = list(range(PROMPT_CHARS))
    assert key_for("completions", {"prompt": tokens}) == \
        key_for("completions", {"prompt": tokens + [1, 2, 3]}) is not None


@pytest.mark.parametrize("endpoint, body", [
    ("completions", {"prompt": "short prompt"}),        # would change as it grows
    ("completions", {"prompt": [1, 2, 3]}),
    ("completions", {"prompt": []}),
    ("completions", {}),
    ("chat", {"messages": "not a list"}),
    ("chat", {"messages": []}),
    ("chat", {"messages": ["not a dict"]}),
    ("embeddings", {"input": "x" * 1000}),
])
def test_prefix_key_none_when_there_is_nothing_to_key(endpoint, body):
    assert key_for(endpoint, body) is None


def test_prefix_key_system_only_chat_still_keys():
    assert key_for("chat", chat(SYSTEM)) is not None


# -- prefix affinity ----------------------------------------------------------------

def conversations(n: int) -> list[list[dict]]:
    return [[{"role": "system", "content": f"system prompt {i % 3}"},
             {"role": "user", "content": f"opening question {i}"}] for i in range(n)]


def replay_rounds(strategy, backends, rounds: int, convs: list[list[dict]]):
    """Each round every conversation sends its next turn; all are in flight until
    the round ends. Returns each conversation's backends and checks the bound."""
    seen = [Counter() for _ in convs]
    for turn in range(rounds):
        for i, messages in enumerate(convs):
            request = RouteRequest(prefix=key_for("chat", chat(*messages)))
            chosen = strategy.pick(backends, request)
            assert chosen.in_flight + 1 <= cap(backends, chosen)
            chosen.in_flight += 1
            seen[i][chosen.name] += 1
            convs[i] = grow(messages, turn)
        for b in backends:
            b.in_flight = 0
    return seen


def test_prefix_affinity_sequential_turns_stick():
    backends = pool(1, 1, 1, 1)
    strategy, seen = PrefixAffinity(), [Counter() for _ in range(8)]
    convs = conversations(8)
    for turn in range(50):
        for i, messages in enumerate(convs):
            chosen = strategy.pick(backends, RouteRequest(prefix=key_for("chat", chat(*messages))))
            chosen.in_flight += 1        # in flight while no other request is routed...
            seen[i][chosen.name] += 1
            chosen.in_flight -= 1        # ...and done before the next one
            convs[i] = grow(messages, turn)
    assert all(c.most_common(1)[0][1] == 50 for c in seen)
    assert len({c.most_common(1)[0][0] for c in seen}) >= 3     # and they spread


def test_prefix_affinity_concurrent_turns_stick_within_the_bound():
    seen = replay_rounds(PrefixAffinity(), pool(1, 1, 1, 1), 50, conversations(8))
    for counts in seen:
        assert counts.most_common(1)[0][1] >= 0.95 * 50


def test_prefix_affinity_bound_holds_under_random_load():
    rng = random.Random(5)
    backends, strategy = pool(2, 1, 1, 1), PrefixAffinity()
    keys = [bytes([k]) * 8 for k in range(3)]          # three hot keys
    active: list[Stub] = []
    for _ in range(3000):
        chosen = strategy.pick(backends, RouteRequest(prefix=rng.choice(keys)))
        assert chosen.in_flight + 1 <= cap(backends, chosen)
        chosen.in_flight += 1
        active.append(chosen)
        while active and rng.random() < 0.5:
            active.pop(rng.randrange(len(active))).in_flight -= 1


def test_prefix_affinity_hot_key_spills_in_ring_order():
    backends, strategy = pool(1, 1, 1, 1), PrefixAffinity()
    request = RouteRequest(prefix=b"one hot conversation")
    order = []
    for _ in range(40):
        chosen = strategy.pick(backends, request)
        assert chosen.in_flight + 1 <= cap(backends, chosen)
        chosen.in_flight += 1
        if chosen.name not in order:
            order.append(chosen.name)
    assert len(order) == 4
    assert max(b.in_flight for b in backends) <= math.ceil(1.25 * 40 / 4)


def keyed_owners(strategy, backends, n=4000) -> dict[int, str]:
    return {k: strategy.pick(backends, RouteRequest(prefix=k.to_bytes(4, "big"))).name
            for k in range(n)}


def test_prefix_affinity_removing_a_backend_moves_only_its_keys():
    backends = pool(1, 1, 1, 1)
    strategy = PrefixAffinity()
    before = keyed_owners(strategy, backends)
    after = keyed_owners(strategy, backends[:3])
    moved = [k for k in before if before[k] != after[k]]
    assert all(before[k] == "b3" for k in moved)
    assert len(moved) == sum(1 for v in before.values() if v == "b3")
    assert 0.18 <= len(moved) / len(before) <= 0.32


def test_prefix_affinity_adding_a_backend_moves_about_one_fifth():
    backends = pool(1, 1, 1, 1)
    strategy = PrefixAffinity()
    before = keyed_owners(strategy, backends)
    after = keyed_owners(strategy, backends + [Stub("b4")])
    moved = [k for k in before if before[k] != after[k]]
    assert all(after[k] == "b4" for k in moved)
    assert 0.14 <= len(moved) / len(before) <= 0.26


def test_prefix_affinity_key_share_follows_weight():
    owners = Counter(keyed_owners(PrefixAffinity(), pool(3, 1)).values())
    assert 0.70 <= owners["b0"] / 4000 <= 0.80


def test_prefix_affinity_ignores_candidate_order():
    backends = pool(1, 1, 1, 1)
    assert keyed_owners(PrefixAffinity(), backends, 500) == \
        keyed_owners(PrefixAffinity(), backends[::-1], 500)


def test_prefix_affinity_without_prefix_is_least_busy():
    backends = [Stub("a", 1, 4), Stub("b", 1, 1), Stub("c", 1, 2)]
    assert PrefixAffinity().pick(backends, NO_KEY).name == "b"
    assert Counter(picks(PrefixAffinity(), pool(1, 1, 1), 6)) == {"b0": 2, "b1": 2, "b2": 2}


def test_prefix_affinity_reuses_the_ring_until_the_set_changes(monkeypatch):
    built = []
    real = ring_module.HashRing
    monkeypatch.setattr(ring_module, "HashRing", lambda m: built.append(1) or real(m))
    strategy, backends = PrefixAffinity(), pool(1, 1, 1)
    for i in range(100):
        strategy.pick(backends, RouteRequest(prefix=bytes([i])))
    assert len(built) == 1
    strategy.pick(backends[:2], RouteRequest(prefix=b"x"))           # a retry subset
    strategy.pick(pool(1, 1, 2), RouteRequest(prefix=b"x"))          # a reweight
    strategy.pick(backends, RouteRequest(prefix=b"x"))               # cached again
    assert len(built) == 3


def test_affinity_rejects_a_load_factor_below_one():
    with pytest.raises(ValueError, match="load_factor"):
        PrefixAffinity(load_factor=0.9)


# -- session affinity -----------------------------------------------------------------

def test_session_affinity_sticks_while_the_backend_is_a_candidate():
    backends, strategy = pool(1, 1, 1, 1), SessionAffinity()
    home = {s: strategy.pick(backends, RouteRequest(session=s)).name for s in ("u1", "u2", "u3")}
    for _ in range(20):
        for session, name in home.items():
            assert strategy.pick(backends, RouteRequest(session=session)).name == name
    gone = home["u1"]
    others = [b for b in backends if b.name != gone]
    moved = strategy.pick(others, RouteRequest(session="u1")).name
    assert moved != gone
    assert strategy.pick(others, RouteRequest(session="u1")).name == moved
    assert strategy.pick(backends, RouteRequest(session="u1")).name == gone    # back home


def test_session_affinity_bounded_load():
    backends, strategy = pool(1, 1, 1, 1), SessionAffinity()
    request = RouteRequest(session="one very busy user")
    for _ in range(100):
        chosen = strategy.pick(backends, request)
        assert chosen.in_flight + 1 <= cap(backends, chosen)
        chosen.in_flight += 1
    assert max(b.in_flight for b in backends) <= math.ceil(1.25 * 100 / 4)


def test_session_affinity_without_session_is_least_busy():
    backends = [Stub("a", 1, 3), Stub("b", 2, 3), Stub("c", 1, 2)]
    assert SessionAffinity().pick(backends, RouteRequest(prefix=b"ignored")).name == "b"


def test_single_candidate_is_always_returned():
    only = [Stub("solo", 1, 99)]
    for name in STRATEGIES:
        assert make_strategy(name).pick(only, RouteRequest(b"k", "s")) is only[0]


# -- factory --------------------------------------------------------------------------

def test_make_strategy_knows_every_configurable_name():
    kinds = {name: type(make_strategy(name)) for name in STRATEGIES}
    assert kinds == {"weighted": WeightedRoundRobin, "least_busy": LeastBusy,
                     "prefix_affinity": PrefixAffinity, "session_affinity": SessionAffinity,
                     "least_latency": LeastLatency}
    assert make_strategy("weighted") is not make_strategy("weighted")    # one per pool


def test_make_strategy_rejects_unknown_names():
    with pytest.raises(ValueError, match="'fastest'"):
        make_strategy("fastest")


# -- prefix_affinity follows a conversation to its previous turn's backend ------------

def chat_turns(*texts: str) -> list[dict]:
    """system, then user/assistant alternating from `texts`."""
    messages = [{"role": "system", "content": "be brief"}]
    for i, text in enumerate(texts):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return messages


def test_a_turns_previous_key_is_the_key_its_previous_turn_had():
    from gateway.routing.prefix_affinity import turn_keys
    first, none = turn_keys(chat_turns("q1"))
    assert none is None                      # an opening turn has no previous turn
    second, previous = turn_keys(chat_turns("q1", "a1", "q2"))
    assert previous == first and second != first
    third, previous = turn_keys(chat_turns("q1", "a1", "q2", "a2", "q3"))
    assert previous == second
    assert turn_keys(chat_turns("q1", "a1 edited", "q2"))[1] == first   # history as sent
    assert turn_keys("nope") == (None, None)


def test_a_spilled_turn_takes_its_conversation_along():
    """Turn 1 spills off a busy home; turn 2 goes where turn 1 went (its history is
    cached there), not back to the root's home, while that backend has room."""
    strategy = PrefixAffinity()
    backends = pool(1, 1, 1, 1)
    chat = BY_NAME["chat"]
    first = strategy.route_key(chat, {"messages": chat_turns("q1")}, {})
    home = strategy.pick(backends, first)
    home.in_flight = 5                       # now over its bound: turn 1 of another
    other = strategy.route_key(chat, {"messages": chat_turns("q1")}, {})
    assert strategy.pick(backends, other) is not home
    # The same conversation's next turn: the root's home is full, so it went elsewhere
    # the first time; remembered, the next turn follows.
    spilled = strategy.pick(backends, strategy.route_key(
        chat, {"messages": chat_turns("q1", "a1", "q2")}, {}))
    assert spilled is not home
    home.in_flight = 0
    follow = strategy.route_key(chat, {"messages": chat_turns("q1", "a1", "q2", "a2", "q3")}, {})
    assert strategy.pick(backends, follow) is spilled and strategy.followed
    # Without the memory (another replica), the ring sends it back home.
    assert PrefixAffinity().pick(backends, follow) is home


def test_a_remembered_backend_over_its_bound_is_passed_over():
    strategy = PrefixAffinity()
    backends = pool(1, 1, 1, 1)
    chat = BY_NAME["chat"]
    went = strategy.pick(backends, strategy.route_key(chat, {"messages": chat_turns("q")}, {}))
    went.in_flight = 9
    nxt = strategy.pick(backends, strategy.route_key(
        chat, {"messages": chat_turns("q", "a", "q2")}, {}))
    assert nxt is not went and not strategy.followed
    assert nxt.in_flight < cap(backends, nxt)
