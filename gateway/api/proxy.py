"""The model APIs of `gateway.endpoints`: read the body, pick a pool, dispatch, relay.

A request flows one way: the middleware named its endpoint; here the body is read
and checked, the caller's key admitted, the model's pool found; the dispatcher
returns the first backend that answered; its answer is relayed. A whole answer is
returned unsent: the middleware sends it, then runs `rec.after_send` (usage, the
backend's release) so the client need not wait for bookkeeping. A stream is
relayed here as it comes, since it cannot wait.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from ..auth import check_model
from ..dispatch import Opened
from ..endpoints import BY_NAME
from ..errors import ModelNotFound, Reason, ShuttingDown, UpstreamError
from ..record import RequestRecord
from ..relay import (SSE_HEADERS, StreamRewriter, body_response, body_usage, error_event,
                     relay_stream)
from ..typedefs import GATEWAY, RECORD
from .body import parse_payload, read_body
from .keys import client_key
from .middleware import stamp_response

CLIENT_GONE = (ConnectionResetError, ConnectionError)
DRAIN_AFTER_DONE_S = 1.0


async def proxy(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    rec: RequestRecord = request[RECORD]
    endpoint = BY_NAME[rec.endpoint]
    key = await client_key(request)
    table = gateway.table   # this request's one config snapshot, from here to the end
    raw = await read_body(request, table.config.server.max_body_bytes)
    payload = parse_payload(raw, endpoint)
    model = payload["model"]
    check_model(key, model)
    pool = table.pool(model)
    if pool is None:
        raise ModelNotFound(f"The model '{model}' does not exist", param="model")
    rec.model = model
    rec.stream = bool(payload.get("stream"))
    route = pool.strategy.route_key(endpoint, payload, request.headers)
    opened = await gateway.dispatcher.open(table, pool, endpoint, payload, rec, route)
    if rec.stream:
        return await _stream(request, opened, rec)
    return await _whole(opened, rec)


async def _whole(opened: Opened, rec: RequestRecord) -> web.Response:
    started = time.perf_counter()
    try:
        body = await opened.response.read()
    except BaseException as exc:
        opened.finish(exc)
        raise
    rec.first_token_at = rec.last_token_at = now = time.perf_counter()
    rec.upstream_wait += now - started

    def after_send(error: BaseException | None) -> None:
        rec.usage = body_usage(body)   # a client gone mid-send still used its tokens
        opened.finish(error)

    rec.after_send = after_send
    return body_response(body, opened.response.content_type, opened.patterns)


async def _stream(request: web.Request, opened: Opened, rec: RequestRecord
                  ) -> web.StreamResponse:
    error: BaseException | None = None
    try:
        resp, error = await _relay_stream(request, opened, rec)
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
    drain = request.app[GATEWAY].drain
    resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
    stamp_response(request, resp, rec)
    rewriter = StreamRewriter(opened.patterns, opened.drop_usage)
    broken: UpstreamError | None = None
    task = asyncio.current_task()
    drain.track(task)
    try:
        await resp.prepare(request)
        await relay_stream(resp, opened.chunks, opened.first, rewriter, rec)
    except UpstreamError as err:
        broken = err  # the client already got it as an SSE error event
    except asyncio.CancelledError:
        opened.response.close()
        if not drain.was_cut(task):
            rec.aborted = Reason.CLIENT_LEFT
            raise
        # Our own drain deadline cut this stream: end it with an error event, not silence.
        task.uncancel()
        rec.aborted = Reason.SHUTDOWN
        await _try_write(resp, error_event(ShuttingDown(
            "the gateway is shutting down and its drain time ran out")))
    except CLIENT_GONE as exc:
        opened.response.close()
        rec.aborted = Reason.CLIENT_LEFT
        rec.status = 499
        return resp, exc
    finally:
        drain.untrack(task)
        rec.usage = rewriter.usage
    await resp.write_eof()
    if broken is None:
        await _drain_runtime(opened, task)
    return resp, broken


async def _drain_runtime(opened: Opened, task: asyncio.Task) -> None:
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
