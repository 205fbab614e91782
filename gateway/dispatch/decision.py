"""The routing decision as span attributes: which backends could take the request,
which were skipped and why, the one chosen, and the reason it won.

Computed only for a span that records, or a request that asked for it with
`X-Gateway-Explain: 1` (then `as_header` gives it as its `X-Gateway-Route`), right after
the dispatcher's pick, from the same state the pick saw. Affinity keys appear only as
their hash on the ring: a session id or a prompt never reaches a span or a header.

For a strategy that reads load, each free candidate's load is given with where it came
from (`gateway.route.load`: `name=load`; `gateway.route.signal`: `name=fresh|stale|
no_reading|not_exposed` and the reading's age), and `gateway.route.signal_fallback` names
why any of them was routed on the gateway's own count instead of its runtime's reading.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..routing import FRESH
from ..routing.ring import hash_point

if TYPE_CHECKING:
    from ..config import EngineConfig
    from .backend import BackendState
    from .fallbacks import Stage
    from ..routing import RouteRequest

# Why the strategy picked the backend it picked, when it had a choice.
WHY = {"weighted": "weight", "least_busy": "lowest_load",
       "least_latency": "lowest_predicted_latency",
       "prefix_affinity": "affinity_key_hash", "session_affinity": "affinity_key_hash"}
PREFIX = "gateway.route."


def explain(stage_index: int, stage: Stage, capable: Sequence[BackendState], tried: set[str],
            route: RouteRequest, chosen: BackendState,
            cache: dict[tuple, tuple[str, ...]],
            engine: EngineConfig | None = None) -> dict[str, Any]:
    """`cache` keeps the names and weights attributes per candidate set (a reload makes
    new sets; it is cleared when it grows); `engine`: the bounds a runtime's own reading
    saturates a backend by."""
    now = time.monotonic()
    strategy = getattr(stage.pool.strategy, "name", type(stage.pool.strategy).__name__)
    skipped: dict[str, list[str]] | None = None
    free = [chosen]
    for b in capable:
        if b is chosen:
            continue
        if b.name in tried:
            why = "tried"
        elif not b.healthy:
            why = "unhealthy"
        elif b.cooling_until > now:
            why = "cooling"
        elif b.ejected_until > now:
            why = "ejected"
        elif b.at_capacity or engine is not None and b.saturated(now, engine):
            why = "saturated"
        else:
            free.append(b)
            continue
        if skipped is None:
            skipped = {}
        skipped.setdefault(why, []).append(b.name)
    extra: dict[str, Any] = {}
    out: dict[str, Any] = {
        "gateway.route.strategy": strategy,
        "gateway.route.candidates": _names(capable, cache),
        "gateway.route.chosen": chosen.name,
        "gateway.route.reason": _why(strategy, free, route, extra, cache),
    }
    if out["gateway.route.reason"] == "affinity_key_hash" and getattr(
            stage.pool.strategy, "followed", False):
        out["gateway.route.reason"] = "previous_turn_backend"   # prefix_affinity's memory
    if len(free) > 1 and getattr(stage.pool.strategy, "uses_load", False):
        _signals(free, now, extra)
        last = getattr(stage.pool.strategy, "last", None)
        if last:   # least_latency: the two it compared, and what it predicted of each
            extra["gateway.route.predicted_s"] = tuple(f"{n}={cost:.4g}" for n, cost in last)
    if stage_index:   # 0, the model's own pool, is left out
        out["gateway.route.stage"] = stage_index
        out["gateway.route.fallback"] = stage.fallback_to
    if skipped is not None:
        for what, names in skipped.items():
            out["gateway.route.skipped." + what] = tuple(names)
    # The dispatcher's last resort (nothing left to fall back to) and an ejected
    # backend's trial request both go to a backend that is resting.
    if chosen.cooling_until > now:
        out["gateway.route.chosen_state"] = "cooling"
    elif chosen.ejected_until > now:
        out["gateway.route.chosen_state"] = "ejected"
    out.update(extra)
    return out


def _why(strategy: str, free: list[BackendState], route: RouteRequest,
         extra: dict[str, Any], cache: dict[tuple, tuple[str, ...]]) -> str:
    if len(free) == 1:
        return "only_candidate"
    why = WHY.get(strategy, strategy)
    if why == "weight":
        key = ("weights", *((b.name, b.weight) for b in free))
        shown = cache.get(key)
        if shown is None:
            shown = _keep(cache, key, tuple(f"{name}={weight:g}" for name, weight in key[1:]))
        extra["gateway.route.weights"] = shown
    else:   # load decides, or bounds an affinity's choice
        extra["gateway.route.in_flight"] = tuple(f"{b.name}={b.in_flight}" for b in free)
    if why == "affinity_key_hash":
        key = route.prefix if route.prefix is not None else (
            route.session.encode("utf-8", "surrogatepass") if route.session else None)
        if key is None:
            return "no_affinity_key_lowest_load"
        extra["gateway.route.affinity_key_hash"] = format(hash_point(key), "016x")
    return why


def _signals(free: list[BackendState], now: float, extra: dict[str, Any]) -> None:
    """Each free candidate's load, where it came from, and why any was not fresh."""
    extra["gateway.route.load"] = tuple(f"{b.name}={b.load}" for b in free)
    shown, fallbacks = [], []
    for b in free:
        signal = b.signal
        age = b.engine.age(now)
        shown.append(f"{b.name}={signal}" if age is None else f"{b.name}={signal} {age:.1f}s")
        if signal != FRESH and signal not in fallbacks:
            fallbacks.append(signal)
    extra["gateway.route.signal"] = tuple(shown)
    if fallbacks:
        extra["gateway.route.signal_fallback"] = tuple(fallbacks)


def as_header(decision: Mapping[str, Any]) -> str:
    """The decision as one `X-Gateway-Route` value: compact JSON, ASCII only (a header
    carries latin-1), without the attribute prefix; tuples as lists."""
    return json.dumps({k[len(PREFIX):] if k.startswith(PREFIX) else k: v
                       for k, v in decision.items()},
                      separators=(",", ":"), ensure_ascii=True)


def _names(capable: Sequence[BackendState], cache: dict[tuple, tuple[str, ...]]
           ) -> tuple[str, ...]:
    key = ("names", *capable)      # a stage's capable backends: the same tuple each time
    names = cache.get(key)
    if names is None:
        names = _keep(cache, key, tuple(b.name for b in capable))
    return names


def _keep(cache: dict[tuple, tuple[str, ...]], key: tuple, value: tuple[str, ...]
          ) -> tuple[str, ...]:
    if len(cache) > 256:
        cache.clear()   # reloads that rename or reweigh must not pile up
    cache[key] = value
    return value
