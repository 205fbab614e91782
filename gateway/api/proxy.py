"""The model APIs of `gateway.endpoints`: read the body, pick a pool, dispatch, relay.

A request flows one way: the middleware named its endpoint; here the body (JSON, a
multipart form, or none) is read and checked, the caller's key admitted, the model's
pool found (or, for a stored response, the one backend holding it); the dispatcher
returns the first backend that answered; its answer is relayed. A whole answer is
returned unsent: the middleware sends it, then runs `rec.after_send` (usage, the
backend's release) so the client need not wait for bookkeeping. A stream (SSE,
named events, or bytes) is relayed here as it comes, since it cannot wait.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from ..dispatch import Opened
from ..clientwatch import ClientWatch
from ..endpoints import BYTES, MULTIPART, NO_BODY, SAME_PATH, Endpoint
from ..errors import UpstreamError
from ..forms import read_form
from ..record import RequestRecord
from ..relay import SSE_HEADERS, StreamRewriter, body_response, body_usage, relay_stream
from ..relay_events import make_rewriter, rewrite_stored
from ..response_ids import IdRewriter
from ..routing import NO_AFFINITY
from ..typedefs import GATEWAY, RECORD
from .body import parse_payload, read_body
from .conversations import answer_kept, expand_follow_up, keep
from .keys import client_key, model_pool
from .middleware import stamp_response
from .output_cap import cap_output
from .relay_bytes import relay_bytes
from .stored import backend_patterns, follow_up, stored_call
from .stream_end import (CLIENT_GONE, client_gone, cut_slow_client, drain_cut, drain_runtime,
                         end_drain_cut, read_whole)


async def proxy(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    rec: RequestRecord = request[RECORD]
    if gateway.tracing is not None:
        rec.trace = gateway.tracing.start_request(request, rec)   # ended by the middleware
    endpoint = rec.api
    assert endpoint is not None   # only the rows of `endpoints` are routed here
    key = await client_key(request)
    table = gateway.table   # this request's one config snapshot, from here to the end
    limit = table.config.server.max_body_bytes
    ids: IdRewriter | None = None
    pinned = target = previous = None
    if endpoint.body == NO_BODY:
        payload: dict = {}
        pool, pinned, target, ids = stored_call(request, table, endpoint, key)
        rec.stream = endpoint.streams is not None and request.query.get("stream") == "true"
        kept = await answer_kept(request, endpoint, pinned, rec)
        if kept is not None:   # a response the gateway keeps, not its runtime
            rec.backend = pinned.name
            return kept
        route = NO_AFFINITY
    else:
        if endpoint.body == MULTIPART:
            payload = await read_form(request, limit)
        else:
            payload = parse_payload(await read_body(request, limit), endpoint, rec, table)
        pool = model_pool(key, table, payload, rec)
        cap_output(endpoint.name, payload, table.config.route(pool.model).max_output_tokens)
        rec.stream = bool(payload.get("stream"))
        if endpoint.stored_ids:
            previous = await expand_follow_up(request, table, payload, key)
            if previous is None:
                pinned, ids = follow_up(table, pool, payload)
        if endpoint.upstream_path == SAME_PATH:
            target = request.rel_url.raw_path
        route = pool.strategy.route_key(endpoint, payload, request.headers)
    opened = await gateway.dispatcher.open(table, pool, endpoint, payload, rec, route,
                                           pinned=pinned, target=target)
    if endpoint.stored_ids and ids is None:
        ids = IdRewriter(opened.backend.name)
    if endpoint.body == NO_BODY:
        opened.patterns = backend_patterns(opened.backend)
    if endpoint.streams == BYTES:
        return await relay_bytes(request, opened, rec, endpoint.has_usage)
    # A runtime that keeps nothing: the gateway stores the answer as it is relayed.
    keeping = keep(request, opened, payload, ids, pool.model, previous, table.config.responses)
    if rec.stream:
        return await _stream(request, opened, rec, endpoint, ids,
                             table.config.server.client_idle_s)
    resp = await _whole(opened, rec, endpoint, ids)
    if keeping is not None:
        await keeping.written()   # before the client has it: any worker can follow it up
    return resp


async def _whole(opened: Opened, rec: RequestRecord, endpoint: Endpoint,
                 ids: IdRewriter | None) -> web.Response:
    body = await read_whole(opened, rec)

    def after_send(error: BaseException | None) -> None:
        # A client gone mid-send still used its tokens; {} = this API reports none.
        rec.usage = body_usage(body) if endpoint.has_usage else {}
        if rec.trace is not None:
            rec.trace.answered(body)
        opened.finish(error)

    rec.after_send = after_send
    if ids is not None:
        body = rewrite_stored(body, ids)
    return body_response(body, opened.response.content_type, opened.patterns)


async def _stream(request: web.Request, opened: Opened, rec: RequestRecord,
                  endpoint: Endpoint, ids: IdRewriter | None,
                  client_idle_s: float) -> web.StreamResponse:
    """Relay the stream, then give the backend back with why it ended early, if it did:
    the runtime's failure after the first byte, the client's connection breaking, or the
    client not reading. One coroutine for it all: every chunk resumes each coroutine
    awaiting it, so a layer less is work less per chunk."""
    error: BaseException | None = None
    try:
        resp, rewriter, watch, task = _open_stream(request, opened, rec, endpoint, ids,
                                                   client_idle_s)
        drain = request.app[GATEWAY].drain
        drain.track(task)
        try:
            await resp.prepare(request)
            try:
                await relay_stream(resp, opened.chunks, opened.first, rewriter, rec, watch)
            except UpstreamError as err:
                error = err  # the client already got it as an SSE error event
            watch.since = time.perf_counter()
            await resp.write_eof()
        except asyncio.CancelledError:
            opened.response.close()
            if watch.fired:
                # Our own cut: the client read nothing for client_idle_s.
                task.uncancel()
                error = await cut_slow_client(request, resp, rec, client_idle_s, rewriter)
                return resp
            if not drain_cut(drain, task, rec):
                raise
            await end_drain_cut(resp, rewriter.error_event)
            await resp.write_eof()
        except CLIENT_GONE as exc:
            client_gone(opened, rec)
            error = exc
            return resp
        finally:
            watch.cancel()
            drain.untrack(task)
            rec.usage = rewriter.usage
        if error is None:
            await drain_runtime(opened, task)
        return resp
    except BaseException as exc:
        error = exc
        raise
    finally:
        opened.finish(error)


def _open_stream(request: web.Request, opened: Opened, rec: RequestRecord,
                 endpoint: Endpoint, ids: IdRewriter | None, client_idle_s: float
                 ) -> tuple[web.StreamResponse, Any, ClientWatch, asyncio.Task]:
    """The stream's response (stamped, not sent), its rewriter, and its client watch."""
    resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
    stamp_response(request, resp, rec)
    rewriter = make_rewriter(endpoint, opened.patterns, opened.drop_usage, ids)
    if rec.trace is not None and type(rewriter) is StreamRewriter:
        # The same rewriter, also noting each choice's finish reason for the span.
        rewriter = rec.trace.stream_rewriter(opened.patterns, opened.drop_usage,
                                             rewriter.end_marker)
    task = asyncio.current_task()
    assert task is not None
    return resp, rewriter, ClientWatch(task, client_idle_s), task
