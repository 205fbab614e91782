"""Checks across sections, run once the schema holds: references, fallback cycles, auth keys."""

from __future__ import annotations

from .build import given
from .types import ENGINE_PRIORITY_KINDS, EngineConfig, HealthConfig, Problem


def references(doc: dict) -> list[Problem]:
    backends = doc["backends"]
    listed = {m for b in backends.values() for m in (b.get("models") or ())}
    # A backend without a `models` list discovers its models at run time: any name may exist.
    discovering = any(b.get("models") is None for b in backends.values())

    def known(model: str) -> bool:
        return discovering or model in listed

    routes = doc.get("routes") or {}
    problems: list[Problem] = []
    for model, route in routes.items():
        if not known(model):
            problems.append((("routes", model), f"no backend serves model '{model}'"))
        for i, fallback in enumerate((route or {}).get("fallbacks") or ()):
            path = ("routes", model, "fallbacks", i)
            problems += _fallback_problems(path, model, fallback, backends, known)
    problems += _cycle_problems(routes)
    keys = ((doc.get("auth") or {}).get("keys")) or []
    problems += _auth_problems(keys, known)
    problems += _budget_problems(keys, doc.get("state") or {})
    problems += _engine_priority_problems(backends)
    problems += _health_problems(doc.get("health"))
    problems += _engine_problems(doc.get("engine"))
    return problems


def _fallback_problems(path: tuple, model: str, fallback: dict, backends: dict,
                       known) -> list[Problem]:
    target_backend, target_model = fallback.get("backend"), fallback.get("model")
    if (target_backend is None) == (target_model is None):
        return [(path, "must name exactly one of 'backend' or 'model'")]
    if target_backend is not None:
        if target_backend not in backends:
            return [(path + ("backend",), f"unknown backend '{target_backend}'")]
        served = backends[target_backend].get("models")
        if served is not None and model not in served:
            return [(path + ("backend",),
                     f"backend '{target_backend}' does not serve model '{model}'")]
        return []
    if target_model == model:
        return [(path + ("model",), "a model cannot fall back to itself")]
    if not known(target_model):
        return [(path + ("model",), f"unknown model '{target_model}'")]
    return []


def _cycle_problems(routes: dict) -> list[Problem]:
    graph = {model: [(i, f["model"]) for i, f in enumerate((route or {}).get("fallbacks") or ())
                     if f.get("backend") is None and f.get("model") not in (None, model)]
             for model, route in routes.items()}
    reported: set[tuple[str, ...]] = set()
    problems: list[Problem] = []
    for start in sorted(graph):
        cycle = _shortest_cycle(graph, start)
        if cycle is None:
            continue
        first = cycle.index(min(cycle))     # one rotation per cycle, however it was reached
        cycle = cycle[first:] + cycle[:first]
        if cycle in reported:
            continue
        reported.add(cycle)
        index = next(i for i, target in graph[cycle[0]] if target == cycle[1])
        problems.append((("routes", cycle[0], "fallbacks", index, "model"),
                         "fallback cycle " + " -> ".join(cycle + (cycle[0],))))
    return problems


def _shortest_cycle(graph: dict, start: str) -> tuple[str, ...] | None:
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for _, target in graph.get(node, ()):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return tuple(reversed(path))
                if target not in parent:
                    parent[target] = node
                    following.append(target)
        frontier = following
    return None


def _auth_problems(keys: list, known) -> list[Problem]:
    problems: list[Problem] = []
    names: dict[str, int] = {}
    values: dict[str, int] = {}
    for i, key in enumerate(keys):
        path = ("auth", "keys", i)
        if key["name"] in names:
            problems.append((path + ("name",), f"duplicate key name '{key['name']}' "
                                               f"(also auth.keys.{names[key['name']]})"))
        names.setdefault(key["name"], i)
        if key["key"] in values:
            j = values[key["key"]]   # never echo the secret itself
            problems.append((path + ("key",), f"same key as auth.keys.{j} ('{keys[j]['name']}')"))
        values.setdefault(key["key"], i)
        for j, pattern in enumerate(key.get("models") or ()):
            if not any(c in pattern for c in "*?[") and not known(pattern):
                problems.append((path + ("models", j), f"unknown model '{pattern}'"))
    return problems


def _budget_problems(keys: list, state: dict) -> list[Problem]:
    """Budget counts must outlive the process: they need a store to live in."""
    if state.get("sqlite") or state.get("redis"):
        return []
    return [(("auth", "keys", i, "budget"),
             "a budget needs a store for its counts: set state.sqlite (one server) or "
             "state.redis (shared by replicas)")
            for i, key in enumerate(keys) if given(key.get("budget"))]


def _engine_priority_problems(backends: dict) -> list[Problem]:
    return [(("backends", name, "engine_priority"),
             f"only kinds {' and '.join(ENGINE_PRIORITY_KINDS)} order requests by priority, "
             f"not kind '{b['kind']}'")
            for name, b in backends.items()
            if b.get("engine_priority") and b["kind"] not in ENGINE_PRIORITY_KINDS]


def _health_problems(health: dict | None) -> list[Problem]:
    resolved = HealthConfig(**given(health))
    if resolved.cooldown_s > resolved.max_cooldown_s:
        return [(("health", "cooldown_s"),
                 f"must not exceed max_cooldown_s ({resolved.max_cooldown_s:g})")]
    return []


def _engine_problems(engine: dict | None) -> list[Problem]:
    resolved = EngineConfig(**given(engine))
    if resolved.stale_after_s <= resolved.interval_s:
        # Every reading would go stale before the next scrape: engine load never counted.
        return [(("engine", "stale_after_s"),
                 f"must be greater than interval_s ({resolved.interval_s:g})")]
    return []
