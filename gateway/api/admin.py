"""The admin API: backend state, the active config, reloads. Needs server.admin_key."""

from __future__ import annotations

import time

from aiohttp import web

from ..limits.auth import bearer_token, same_secret
from ..config import EngineConfig, redacted, url_without_password
from ..console.guard import admitted_by_session
from ..dispatch import BackendState
from ..engine import specs_for
from ..errors import BadRequest, NotFound, Unauthorized
from ..reload import reload_everywhere
from ..typedefs import CONFIG_PATH, GATEWAY


def require_admin(request: web.Request) -> None:
    key = request.app[GATEWAY].config.server.admin_key
    if not key:
        raise NotFound("the admin API is disabled: set server.admin_key to enable it")
    header = request.headers.get("Authorization")
    if header is None and admitted_by_session(request):
        return   # the console's session (and, for a change, its CSRF check)
    given = bearer_token(header) or ""
    if not same_secret(given, key):
        raise Unauthorized("a valid admin key is required")


async def backends(request: web.Request) -> web.Response:
    require_admin(request)
    gateway = request.app[GATEWAY]
    now = time.monotonic()
    rows = []
    # A discover backend's members (`pool/10.0.0.5:8000`), and those draining after
    # they left DNS, under `backend`, the configured name.
    states = [*((s, False) for s in gateway.states.values()),
              *((s, True) for s in gateway.members.draining.values())]
    for state, draining in states:
        rows.append({
            "name": state.name, "backend": state.config.label, "draining": draining,
            "kind": state.config.kind, "url": url_without_password(state.config.url),
            "healthy": state.healthy, "available": state.available(now),
            "in_flight": state.in_flight, "weight": state.weight,
            "max_concurrency": state.config.max_concurrency,
            "ejected_for_s": round(max(0.0, state.ejected_until - now), 3),
            "cooling_for_s": round(max(0.0, state.cooling_until - now), 3),
            "consecutive_failures": state.consecutive_failures,
            "models": list(state.serves()),
            "load": state.load,
            "ewma_ttft_s": _rounded(state.ewma_ttft),
            "load_signal": state.signal,
            "service_time_s": _rounded(state.service_time),
            "batch": state.batch or None,
            "engine": _engine(state, gateway.config.engine, now),
        })
    return web.json_response({"backends": rows})


def _engine(state: BackendState, engine: EngineConfig, now: float) -> dict | None:
    """What the runtime last said of its own load: None for a kind that says nothing.
    The values are those of the gauges: null when not exposed or no longer fresh."""
    if not specs_for(state.config.kind):
        return None
    view = state.engine
    reading = view.fresh(now)
    return {
        "fresh": reading is not None,
        "age_s": _rounded(view.age(now)),
        "queue_depth": reading.waiting if reading else None,
        "running_requests": reading.running if reading else None,
        "kv_cache_usage": reading.kv_usage if reading else None,
        "loaded": reading.loaded if reading else None,
        "saturated": state.saturated(now, engine),
        "last_failure": view.failure,
    }


def _rounded(seconds: float | None) -> float | None:
    return round(seconds, 3) if seconds is not None else None


async def reload(request: web.Request) -> web.Response:
    require_admin(request)
    path = request.app.get(CONFIG_PATH)
    if not path:
        raise BadRequest("this gateway was not started from a config file")
    result = await reload_everywhere(request.app, path)
    return web.json_response(result.to_dict(), status=200 if result.ok else 400)


async def active_config(request: web.Request) -> web.Response:
    require_admin(request)
    gateway = request.app[GATEWAY]
    error = gateway.last_reload_error
    return web.json_response({"path": request.app.get(CONFIG_PATH),
                              "active": redacted(gateway.config),
                              "last_error": error.to_dict() if error else None})
