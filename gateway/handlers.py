"""The HTTP surface: /v1 proxy endpoints, model listing, health, readiness, metrics, admin."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .auth import check_model, visible_models
from .dispatch import Opened
from .errors import ModelNotFound, RateLimited, ShuttingDown, UpstreamError
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .middlewares import stamp_response
from .record import RequestRecord
from .relay import (SSE_HEADERS, StreamRewriter, body_response, body_usage, error_event,
                    relay_stream)
from .requests import needed_capability, parse_payload, read_body
from .routing import RouteRequest
from .routing.prefix_affinity import prefix_key
from .config import ApiKey
from .typedefs import GATEWAY, RECORD

CLIENT_GONE = (ConnectionResetError, ConnectionError)
DRAIN_AFTER_DONE_S = 1.0
NO_AFFINITY = RouteRequest()   # what every strategy but the affinity ones gets


async def proxy(request: web.Request) -> web.StreamResponse:
    """/v1/chat/completions, /v1/completions and /v1/embeddings: the middleware named
    the endpoint in the request's record."""
    gateway = request.app[GATEWAY]
    rec: RequestRecord = request[RECORD]
    endpoint = rec.endpoint
    key = client_key(request)
    table = gateway.table
    raw = await read_body(request, table.config.server.max_body_bytes)
    payload = parse_payload(raw, endpoint)
    model = payload["model"]
    check_model(key, model)
    pool = table.pool(model)
    if pool is None:
        raise ModelNotFound(f"The model '{model}' does not exist", param="model")
    rec.model = model
    rec.stream = bool(payload.get("stream"))
    route = _route_request(request, endpoint, payload, table.config.route(model).strategy)
    opened = await gateway.dispatcher.open(table, pool, endpoint, payload,
                                           needed_capability(endpoint, payload), rec, route)
    error: BaseException | None = None
    try:
        if rec.stream:
            resp, error = await _relay_stream(request, opened, rec)
            return resp
        started = time.perf_counter()
        body = await opened.response.read()
        rec.first_token_at = rec.last_token_at = now = time.perf_counter()
        rec.upstream_wait += now - started
        resp = body_response(body, opened.response.content_type, opened.patterns)
        stamp_response(request, resp, rec)
        # Sent here, not by the middleware, so that the client has its answer before
        # the bookkeeping: usage parsing, and (in finally) the backend's release.
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except CLIENT_GONE:
            rec.status = 499   # gone before its answer; its usage still counts for tpm
        rec.usage = body_usage(body)
        return resp
    except BaseException as exc:
        error = exc
        raise
    finally:
        opened.finish(error)


async def _relay_stream(request: web.Request, opened: Opened, rec: RequestRecord
                        ) -> tuple[web.StreamResponse, BaseException | None]:
    """The relayed stream, and why it ended early: the runtime's failure after the
    first byte, or the client's connection breaking."""
    gateway = request.app[GATEWAY]
    resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
    stamp_response(request, resp, rec)
    rewriter = StreamRewriter(opened.patterns, opened.drop_usage)
    broken: UpstreamError | None = None
    task = asyncio.current_task()
    gateway.streams.add(task)
    try:
        await resp.prepare(request)
        await relay_stream(resp, opened.chunks, opened.first, rewriter, rec)
    except UpstreamError as err:
        broken = err  # the client already got it as an SSE error event
    except asyncio.CancelledError:
        opened.response.close()
        if not (gateway.draining and task.cancelling() == 1 and task in gateway.cut):
            rec.aborted = "client_left"
            raise
        # Our own drain deadline cut this stream: end it with an error event, not silence.
        task.uncancel()
        rec.aborted = "shutdown"
        await _try_write(resp, error_event(ShuttingDown(
            "the gateway is shutting down and its drain time ran out")))
    except CLIENT_GONE as exc:
        opened.response.close()
        rec.aborted = "client_left"
        rec.status = 499
        return resp, exc
    finally:
        gateway.streams.discard(task)
        rec.usage = rewriter.usage
    await resp.write_eof()
    if broken is None:
        await _drain(opened, task)
    return resp, broken


async def _drain(opened: Opened, task: asyncio.Task) -> None:
    """Read the runtime's last bytes after [DONE], so its connection goes back to the pool.

    The client already has the whole answer: if it leaves now, the stream still counts
    as complete, not as a client that left.
    """
    try:
        async with asyncio.timeout(DRAIN_AFTER_DONE_S):
            async for _ in opened.chunks:
                pass
    except asyncio.CancelledError:
        task.uncancel()
        opened.response.close()
    except (TimeoutError, UpstreamError):
        opened.response.close()


async def _try_write(resp: web.StreamResponse, data: bytes) -> None:
    try:
        await resp.write(data)
    except (asyncio.CancelledError, *CLIENT_GONE):
        pass


def _route_request(request: web.Request, endpoint: str, payload: dict,
                   strategy: str) -> RouteRequest:
    if strategy == "prefix_affinity":
        return RouteRequest(prefix=prefix_key(endpoint, payload))
    if strategy == "session_affinity":
        user = payload.get("user")
        session = request.headers.get("X-Session-ID") or (user if isinstance(user, str) else None)
        return RouteRequest(session=session)
    return NO_AFFINITY


def client_key(request: web.Request) -> ApiKey | None:
    """The caller's key (None when auth is off), once its rate limits admit the request."""
    gateway = request.app[GATEWAY]
    key = gateway.keys.authenticate(request.headers.get("Authorization"))
    if key is None:
        return None
    request[RECORD].key_name = key.name
    refusal = gateway.limiter.admit(key.name)
    if refusal is not None:
        gateway.metrics.rate_limited.labels(key.name, refusal.limit).inc()
        raise RateLimited(refusal.message, retry_after=refusal.retry_after)
    return key


async def list_models(request: web.Request) -> web.Response:
    key = client_key(request)
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
    body = request.app[GATEWAY].metrics.expose()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})
