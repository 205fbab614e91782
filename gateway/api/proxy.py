"""The model APIs of `gateway.endpoints`: read the body, pick a pool, dispatch, relay.

A request flows one way: the middleware named its endpoint; here the body (JSON, a
multipart form, or none) is read and checked, the caller's key admitted, the model's
pool found (or, for a stored response, the one backend holding it); the dispatcher
returns the first backend that answered; its answer is relayed. A whole answer is
returned unsent: the middleware sends it, then runs `rec.after_send` (usage, the
backend's release) so the client need not wait for bookkeeping. A stream is handed to
the one relay (`gateway.relay.stream`), since it cannot wait.
"""

from __future__ import annotations

from aiohttp import web

from ..dispatch import Call, Opened
from ..endpoints import SAME_PATH, Body, Endpoint
from ..record import RequestRecord
from ..relay.events import rewrite_stored
from ..relay.response_ids import IdRewriter
from ..relay.whole import body_response, body_usage, read_whole
from ..routing import NO_AFFINITY
from ..typedefs import GATEWAY, RECORD
from .body import note_named, parse_payload, read_body
from .conversations import answer_kept, expand_follow_up, keep
from .forms import read_form
from .keys import client_key, model_pool
from .middleware import stream_answer
from .output_cap import cap_output
from .plans import AsIs
from .stored import follow_up, stored_call


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
    if endpoint.body is Body.NONE:
        payload: dict = {}
        pool, pinned, target, ids = stored_call(request, table, endpoint, key)
        rec.stream = endpoint.streams is not None and request.query.get("stream") == "true"
        kept = await answer_kept(request, endpoint, pinned, rec)
        if kept is not None:   # a response the gateway keeps, not its runtime
            rec.backend = pinned.name
            return kept
        route = NO_AFFINITY
    else:
        if endpoint.body is Body.MULTIPART:
            payload = await read_form(request, limit,
                                      lambda named: note_named(rec, named, table))
        else:
            payload = parse_payload(await read_body(request, limit), endpoint, rec, table)
        pool = model_pool(key, table, payload, rec)
        cap_output(endpoint, payload, table.config.route(pool.model).max_output_tokens)
        rec.stream = bool(payload.get("stream"))
        if endpoint.stored_ids:
            previous = await expand_follow_up(request, table, payload, key)
            if previous is None:
                pinned, ids = follow_up(table, pool, payload)
        if endpoint.upstream_path == SAME_PATH:
            target = request.rel_url.raw_path
        route = pool.strategy.route_key(endpoint, payload, request.headers)
    plan = AsIs(endpoint, payload, rec.ticket)
    opened = await gateway.dispatcher.open(Call(table, pool, endpoint, payload, rec, route,
                                                plan, pinned, target))
    if endpoint.stored_ids and ids is None:
        ids = IdRewriter(opened.backend.name)
        ids.previous = previous   # a follow-up the gateway answered: the answer says its id
    # A runtime that keeps nothing: the gateway stores the answer as it is relayed.
    keeping = keep(request, opened, payload, ids, pool.model, table.config.responses)
    if opened.shaped.fmt is not None:
        return await stream_answer(request, opened, rec, table.config, ids)
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
