"""The caller's key: who is calling, and whether their rate limits admit the request."""

from __future__ import annotations

from aiohttp import web

from ..config import ApiKey
from ..errors import RateLimited
from ..typedefs import GATEWAY, RECORD


async def client_key(request: web.Request, *,
                     accepts_x_api_key: bool = False) -> ApiKey | None:
    """The caller's key (None when auth is off), once its rate limits admit the request.
    `accepts_x_api_key`: Anthropic's clients send the key as `x-api-key`."""
    gateway = request.app[GATEWAY]
    headers = request.headers
    key = gateway.keys.authenticate(headers.get("Authorization"), headers.get("x-api-key"),
                                    accepts_x_api_key=accepts_x_api_key)
    if key is None:
        return None
    request[RECORD].key_name = key.name
    refusal = await gateway.limiter.acquire(key.name)   # Redis: a round trip
    if refusal is not None:
        gateway.metrics.rate_limited.labels(key.name, refusal.limit).inc()
        raise RateLimited(refusal.message, retry_after=refusal.retry_after)
    return key
