"""The routing decision as span attributes: which backends could take the request,
which were skipped and why, the one chosen, and the reason it won.

Computed only for a span that records, right after the dispatcher's pick, from the
same state the pick saw. Affinity keys appear only as their hash on the ring: a
session id or a prompt never reaches a span.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

from ..routing.ring import hash_point

if TYPE_CHECKING:
    from ..dispatch.backend import BackendState
    from ..dispatch.fallbacks import Stage
    from ..routing import RouteRequest

# Why the strategy picked the backend it picked, when it had a choice.
WHY = {"weighted": "weight", "least_busy": "lowest_load",
       "prefix_affinity": "affinity_key_hash", "session_affinity": "affinity_key_hash"}


def explain(stage_index: int, stage: Stage, capable: Sequence[BackendState], tried: set[str],
            route: RouteRequest, chosen: BackendState,
            weights: dict[tuple, tuple[str, ...]]) -> dict[str, Any]:
    """`weights` caches the weights attribute per candidate set (they change by reload)."""
    now = time.monotonic()
    strategy = getattr(stage.pool.strategy, "name", type(stage.pool.strategy).__name__)
    skipped: dict[str, list[str]] = {"tried": [], "unhealthy": [], "cooling": [],
                                     "ejected": [], "saturated": []}
    free = [chosen]
    for b in capable:
        if b is chosen:
            continue
        if b.name in tried:
            skipped["tried"].append(b.name)
        elif not b.healthy:
            skipped["unhealthy"].append(b.name)
        elif b.cooling_until > now:
            skipped["cooling"].append(b.name)
        elif b.ejected_until > now:
            skipped["ejected"].append(b.name)
        elif b.at_capacity:
            skipped["saturated"].append(b.name)
        else:
            free.append(b)
    extra: dict[str, Any] = {}
    out: dict[str, Any] = {
        "gateway.route.strategy": strategy,
        "gateway.route.candidates": tuple(b.name for b in capable),
        "gateway.route.chosen": chosen.name,
        "gateway.route.reason": _why(strategy, free, route, extra, weights),
    }
    if stage_index:   # 0, the model's own pool, is left out
        out["gateway.route.stage"] = stage_index
        out["gateway.route.fallback"] = stage.fallback_to
    for what, names in skipped.items():
        if names:
            out[f"gateway.route.skipped.{what}"] = tuple(names)
    # The dispatcher's last resort (nothing left to fall back to) and an ejected
    # backend's trial request both go to a backend that is resting.
    if chosen.cooling_until > now:
        out["gateway.route.chosen_state"] = "cooling"
    elif chosen.ejected_until > now:
        out["gateway.route.chosen_state"] = "ejected"
    out.update(extra)
    return out


def _why(strategy: str, free: list[BackendState], route: RouteRequest,
         extra: dict[str, Any], weights: dict[tuple, tuple[str, ...]]) -> str:
    if len(free) == 1:
        return "only_candidate"
    why = WHY.get(strategy, strategy)
    if why == "weight":
        key = tuple((b.name, b.weight) for b in free)
        shown = weights.get(key)
        if shown is None:
            if len(weights) > 256:
                weights.clear()   # reloads that reweigh or rename must not pile up
            shown = weights[key] = tuple(f"{name}={weight:g}" for name, weight in key)
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
