"""Stored responses: which backend a response id (or `previous_response_id`) belongs to.

The id a client holds names its backend (see `gateway.relay.response_ids`), so every
replica, before or after a restart, sends a stored-response call or a follow-up to
the backend that made the response, and to it alone: no other backend has it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from ..limits.auth import model_allowed
from ..config import ApiKey, BackendConfig, backend_label
from ..dispatch import BackendState, Pool, RouteTable
from ..endpoints import Endpoint
from ..errors import BadRequest, Forbidden, NotFound
from ..relay.chat import model_patterns
from ..relay.response_ids import IdRewriter, runtime_ref
from ..routing import make_strategy


class ResponseNotFound(NotFound):
    code = "response_not_found"


def _holder(table: RouteTable, public: Any, what: str, param: str
            ) -> tuple[BackendState, str]:
    """The configured backend that holds the response `public`, and its own id for it."""
    ref = runtime_ref(public)
    state = table.states.get(ref[0]) if ref is not None else None
    if state is None or ref is None or backend_label(ref[0]) not in table.config.backends:
        raise ResponseNotFound(f"{what} with id '{str(public)[:200]}' not found", param=param)
    return state, ref[1]


def stored_call(request: web.Request, table: RouteTable, endpoint: Endpoint,
                key: ApiKey | None) -> tuple[Pool, BackendState, str, IdRewriter]:
    """For GET/DELETE/cancel/input_items: a pool of the one backend holding the response,
    that backend, the upstream path with the runtime's own id, and the id rewriter."""
    public = request.match_info["response_id"]
    state, runtime_id = _holder(table, public, "Response", "response_id")
    if key is not None and not any(model_allowed(key, m) for m in state.serves()):
        raise Forbidden("This API key may not use the models of the backend holding "
                        "this response.", param="response_id")
    target = endpoint.upstream_path.format(response_id=quote(runtime_id, safe=""))
    query = request.rel_url.raw_query_string
    if query:
        target += "?" + query
    pool = Pool("", (state,), make_strategy("weighted"))
    return pool, state, target, IdRewriter(state.name, (runtime_id,))


def follow_up(table: RouteTable, pool: Pool, payload: dict
              ) -> tuple[BackendState | None, IdRewriter | None]:
    """A request with `previous_response_id` goes to the backend holding that response,
    with the runtime's own id in the body; without one, nothing is pinned."""
    previous = payload.get("previous_response_id")
    if previous is None:
        return None, None
    state, runtime_id = _holder(table, previous, "Previous response", "previous_response_id")
    if pool.model not in state.serves():
        raise BadRequest(f"previous_response_id belongs to backend '{state.name}', which "
                         f"does not serve model '{pool.model}'", param="previous_response_id")
    payload["previous_response_id"] = runtime_id
    return state, IdRewriter(state.name, (runtime_id,))


def backend_patterns(backend: BackendConfig) -> tuple[tuple[bytes, bytes], ...]:
    """A stored response names no model in its request: rewrite every model id the
    backend knows back to its public name (the first, when one id has several)."""
    models = backend.models or {}
    seen: dict[str, str] = {}
    for public, runtime_id in models.items():
        seen.setdefault(runtime_id, public)
    return tuple(p for runtime_id, public in seen.items()
                 for p in model_patterns(runtime_id, public))
