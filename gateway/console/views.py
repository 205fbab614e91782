"""The console's JSON: one answer per refresh with everything the page shows but the
config (`GET /admin/config`, asked again only when `config_version` changes). The keys
are `GET /admin/keys`' entries (api/tenancy.py), and the queue is the scheduler's room per
model and class with its oldest wait (`Scheduler.rows`, read only when a page asks). The
history is sent when it has a point the page has not seen (`?history=<version>` names the
one it has), else null: a new point comes every 5 s, a refresh every 2 s.

Under --workers the worker that answers adds the other workers' figures (share.py) to
its own: in flight, the queue's counts and each key's queued summed, the oldest wait the
longest of any worker's, an ejection or cooldown in any worker shown with the longest
time left, the tails merged by time. Health, engine readings, the history, a key's in
flight and its tokens are the server's already.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from ..api.admin import require_admin
from ..api.tenancy import entry
from ..config import PRIORITIES
from ..dispatch import BackendState
from ..errors import Unauthorized
from ..state import Gateway
from ..typedefs import CONSOLE, GATEWAY
from .guard import admin_key, session_of
from .pages import secured
from .parts import Console, worker_figures
from .tail import SIZE, entries


async def state(request: web.Request) -> web.Response:
    require_admin(request)
    console, gateway = request.app[CONSOLE], request.app[GATEWAY]
    others: list[dict[str, Any]] = []
    if console.share is not None:
        console.share.mark_open()
        others = console.share.others()
    figures = [worker_figures(gateway), *others]
    names = list(gateway.states)
    history = console.history
    seen = request.query.get("history") == str(history.version)
    body = {
        "at": round(time.time(), 3),
        "workers": len(figures),
        "draining": gateway.draining,
        "health_interval_s": gateway.config.health.interval_s,
        "models": _models(gateway),
        "backends": [_backend(s, gateway, figures) for s in gateway.states.values()],
        "queue": _queue(gateway, figures),
        "keys": _keys(gateway, others),
        "last_reload": _last_reload(gateway),
        "config_version": gateway.reloads,
        "tail": _tail(console, others),
        "history_version": history.version,
        "history": None if seen else orjson.Fragment(history.to_json(names)),
    }
    return secured(web.Response(body=orjson.dumps(body), content_type="application/json"))


async def session(request: web.Request) -> web.Response:
    """The signed-in page's CSRF token and when its session ends."""
    admin_key(request)
    found = session_of(request)
    if found is None:
        raise Unauthorized("no console session: sign in at /admin/login")
    token = request.app[CONSOLE].sessions.csrf_token(found)
    return secured(web.json_response({"csrf_token": token, "expires_at": found.expires}))



def _models(gateway: Gateway) -> list[dict[str, Any]]:
    config = gateway.config
    rows = []
    for name in gateway.table.model_names:
        pool = gateway.table.pools[name]
        route = config.route(name)
        rows.append({"name": name, "strategy": route.strategy,
                     "backends": [b.name for b in pool.backends],
                     "fallbacks": [f.model or f.backend for f in route.fallbacks]})
    return rows


def _backend(state: BackendState, gateway: Gateway,
             figures: list[dict[str, Any]]) -> dict[str, Any]:
    name, wall = state.name, time.time()
    ejected = max((f["ejected_until"].get(name, 0.0) for f in figures), default=0.0)
    cooling = max((f["cooling_until"].get(name, 0.0) for f in figures), default=0.0)
    return {
        "name": name, "kind": state.config.kind, "weight": state.weight,
        "state": _word(state, gateway, ejected > wall),
        "in_flight": sum(f["in_flight"].get(name, 0) for f in figures),
        "max_concurrency": state.config.max_concurrency,
        "ejected_for_s": round(max(0.0, ejected - wall), 1),
        "cooling_for_s": round(max(0.0, cooling - wall), 1),
        "models": list(state.serves()),
        "engine": _engine(state),
    }


def _word(state: BackendState, gateway: Gateway, ejected: bool) -> str:
    """up, down, ejected or draining: the state in words, never colour alone."""
    if gateway.draining or getattr(state, "draining", False):
        return "draining"
    if not state.healthy:
        return "down"
    return "ejected" if ejected else "up"


def _engine(state: BackendState) -> dict[str, Any] | None:
    view = state.engine
    now = time.monotonic()
    age = view.age(now)
    if age is None and view.failure is None:
        return None   # a kind that says nothing of its load, or no reading yet
    reading = view.fresh(now)
    return {"fresh": reading is not None,
            "age_s": round(age, 1) if age is not None else None,
            "queue_depth": reading.waiting if reading else None,
            "running_requests": reading.running if reading else None,
            "kv_cache_usage": reading.kv_usage if reading else None,
            "last_failure": view.failure}


def _queue(gateway: Gateway, figures: list[dict[str, Any]]) -> dict[str, Any]:
    """The room: every waiter (`waiting`), per model and class those that take a turn
    (`rows`), and those waiting for a cold pool to come up (`cold`: no class, no turn)."""
    merged: dict[tuple[str, int], list] = {}
    for f in figures:
        for row in f.get("queue", ()):
            at = (row["model"], PRIORITIES.index(row["priority"]))
            found = merged.get(at)
            if found is None:
                merged[at] = [row["waiting"], row["oldest_since"]]
            else:
                found[0] += row["waiting"]
                found[1] = min(found[1], row["oldest_since"])
    wall = time.time()
    rows = [{"model": model, "priority": PRIORITIES[cls], "waiting": n,
             "oldest_wait_s": round(max(0.0, wall - since), 2)}
            for (model, cls), (n, since) in sorted(merged.items())]
    waiting = sum(f["waiting"] for f in figures)
    queue = gateway.config.queue
    return {"waiting": waiting, "cold": max(0, waiting - sum(r["waiting"] for r in rows)),
            "rows": rows, "max_size": queue.max_size, "max_wait_s": queue.max_wait_s,
            "promote_after_s": queue.promote_after_s}


def _keys(gateway: Gateway, others: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`GET /admin/keys`' entries (never the key itself), each key's queued counting the
    other workers' waiters too."""
    rows = [entry(gateway, key, state) for key, state in gateway.tenants.entries()]
    if others:
        for row in rows:
            row["queued"] += sum(f.get("queued", {}).get(row["name"], 0) for f in others)
    return rows


def _last_reload(gateway: Gateway) -> dict[str, Any] | None:
    result = gateway.last_reload_error or gateway.last_reload
    return result.to_dict() if result is not None else None


def _tail(console: Console, others: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lines = entries(console.tail.lines)
    if others:
        lines.extend(line for f in others for line in f.get("tail", ()))
        lines.sort(key=lambda line: line["time"])
    return lines[-SIZE:]
