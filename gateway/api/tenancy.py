"""Who used what: `GET /admin/keys` (every key; the admin key) and `GET /gateway/key`
(the caller's own). Each key's ENTRY: its settings, what it has in flight and waiting,
its tokens this UTC day and month, and its budget with what is left. Never the key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..config import PRIORITIES, ApiKey
from ..limits.tickets import KeyState
from ..typedefs import GATEWAY

if TYPE_CHECKING:
    from ..state import Gateway
from .admin import require_admin
from .keys import client_key


async def admin_keys(request: web.Request) -> web.Response:
    require_admin(request)
    gateway = request.app[GATEWAY]
    return web.json_response({"keys": [entry(gateway, key, state)
                                       for key, state in gateway.tenants.entries()]})


async def own_key(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    key = await client_key(request)
    return web.json_response(entry(gateway, *gateway.tenants.entry_of(key)))


def entry(gateway: Gateway, key: ApiKey | None, state: KeyState) -> dict[str, Any]:
    budgets = gateway.tenants.budgets
    day, month = budgets.used(state.name)
    budget = key.budget if key is not None else None
    left_day, left_month = budgets.left(state.name, budget)
    in_flight = state.shared.value() if state.shared is not None else state.in_flight
    return {
        "name": state.name,
        "priority": PRIORITIES[state.cls],
        "share": key.share if key is not None else 1,
        "models": list(key.models) if key is not None else ["*"],
        "rpm": key.rpm if key is not None else None,
        "tpm": key.tpm if key is not None else None,
        "max_concurrency": state.cap,
        "in_flight": in_flight,
        "queued": gateway.dispatcher.queue.queued(state),
        "tokens": {"day": day, "month": month},
        "budget": None if budget is None else {
            "tokens_per_day": budget.tokens_per_day,
            "tokens_per_month": budget.tokens_per_month,
            "left_day": left_day, "left_month": left_month},
    }
