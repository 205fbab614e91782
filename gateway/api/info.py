"""What the gateway says about itself: its models, liveness, readiness and metrics."""

from __future__ import annotations

from aiohttp import web

from ..limits.auth import visible_models
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..typedefs import GATEWAY
from .keys import client_key


async def list_models(request: web.Request) -> web.Response:
    key = await client_key(request)
    names = visible_models(key, request.app[GATEWAY].table.model_names)
    return web.json_response({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "gateway"}
        for name in names]})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    if gateway.ready():
        return web.json_response({"status": "ready"})
    reason = "draining" if gateway.draining else "no healthy backend"
    return web.json_response({"status": "not ready", "reason": reason}, status=503)


async def metrics(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    gateway.publish_in_flight()
    gateway.publish_keys()
    body = gateway.metrics.expose(gateway.config.backends.keys())
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})
