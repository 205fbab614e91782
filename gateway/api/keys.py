"""The caller's key: who is calling, whether their rate limits admit the request, and
whether it may use the model asked for."""

from __future__ import annotations

from aiohttp import web

from ..limits.auth import check_model
from ..config import ApiKey
from ..dispatch import Pool, RouteTable
from ..errors import ModelNotFound, RateLimited
from ..limits.classes import tier_class
from ..record import RequestRecord
from ..typedefs import GATEWAY, RECORD


async def client_key(request: web.Request, *,
                     accepts_x_api_key: bool = False) -> ApiKey | None:
    """The caller's key (None when auth is off), once its rate limits admit the request.
    `accepts_x_api_key`: Anthropic's clients send the key as `x-api-key`."""
    gateway = request.app[GATEWAY]
    headers = request.headers
    key = gateway.keys.authenticate(headers.get("Authorization"), headers.get("x-api-key"),
                                    accepts_x_api_key=accepts_x_api_key)
    rec = request[RECORD]
    # Its class (X-Priority may lower it: a 400 when it names none), slot and budget.
    rec.ticket = gateway.tenants.ticket(key, headers.get("X-Priority"))
    if key is None:
        return None
    rec.key_name = key.name
    refusal = await gateway.limiter.acquire(key.name)   # Redis: a round trip
    if refusal is not None:
        gateway.metrics.rate_limited.labels(key.name, refusal.limit).inc()
        raise RateLimited(refusal.message, retry_after=refusal.retry_after)
    return key


def model_pool(key: ApiKey | None, table: RouteTable, payload: dict,
               rec: RequestRecord) -> Pool:
    """The pool of the body's `model`, once the key may use it (a 403, else a 404)."""
    model = payload["model"]
    check_model(key, model)
    pool = table.pool(model)
    if pool is None:
        raise ModelNotFound(f"The model '{model}' does not exist", param="model")
    rec.model = model
    ticket = rec.ticket
    if ticket is not None and "service_tier" in payload:
        cls = tier_class(payload["service_tier"])   # passed upstream unchanged
        if cls is not None:
            ticket.lower(cls)
    return pool
