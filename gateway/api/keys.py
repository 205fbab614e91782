"""The caller's key: who is calling, and whether their rate limits admit the request."""

from __future__ import annotations

from aiohttp import web

from ..config import ApiKey
from ..errors import RateLimited
from ..typedefs import GATEWAY, RECORD


async def client_key(request: web.Request) -> ApiKey | None:
    """The caller's key (None when auth is off), once its rate limits admit the request."""
    gateway = request.app[GATEWAY]
    key = gateway.keys.authenticate(request.headers.get("Authorization"))
    if key is None:
        return None
    request[RECORD].key_name = key.name
    refusal = await gateway.limiter.acquire(key.name)   # Redis: a round trip
    if refusal is not None:
        gateway.metrics.rate_limited.labels(key.name, refusal.limit).inc()
        raise RateLimited(refusal.message, retry_after=refusal.retry_after)
    return key
