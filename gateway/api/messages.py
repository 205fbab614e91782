"""Anthropic Messages: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

Routed like chat (body's model, keys, limits, retries, fallbacks, metrics, log line); each
try goes the way its backend needs (`messages_plan`): as it is to a runtime serving
/v1/messages, else translated to and from chat completions. Errors are Anthropic-shaped:
the middleware renders them (`anthropic_shape`) from the endpoint row's error_shape.

As in `proxy`, a whole answer is returned unsent and its bookkeeping waits in
`rec.after_send`; a stream is handed to the one relay, which ends it with Anthropic's
`event: error` if it breaks after its first byte.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..dispatch import Call, Opened, RouteTable
from ..endpoints import BY_PATH
from ..errors import BadRequest
from ..record import RequestRecord
from ..relay.anthropic import native_whole, tokenizer_count, translated_whole
from ..relay.chat import rewrite_model
from ..relay.whole import read_whole
from ..translate.anthropic import TranslationError, validate_route
from ..typedefs import GATEWAY, RECORD
from .body import note_named, read_body
from .keys import client_key, model_pool
from .messages_plan import CountTokensPlan, MessagesPlan, Way, passed_headers
from .middleware import stream_answer
from .output_cap import cap_output

COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


async def messages(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    rec: RequestRecord = request[RECORD]
    if gateway.tracing is not None:
        rec.trace = gateway.tracing.start_request(request, rec)   # ended by the middleware
    endpoint = BY_PATH[request.path]
    counting = request.path == COUNT_TOKENS_PATH
    key = await client_key(request, accepts_x_api_key=True)
    table = gateway.table   # this request's one config snapshot, from here to the end
    raw = await read_body(request, table.config.server.max_body_bytes)
    payload = parse_messages(raw, rec, table)
    pool = model_pool(key, table, payload, rec)
    cap_output(endpoint, payload, table.config.route(pool.model).max_output_tokens)
    rec.stream = bool(payload.get("stream")) and not counting
    plan_type = CountTokensPlan if counting else MessagesPlan
    plan = plan_type(payload, passed_headers(request.headers), rec.ticket)
    plan.check(table.stages(pool))
    route = pool.strategy.route_key(endpoint, payload, request.headers)
    opened = await gateway.dispatcher.open(Call(table, pool, endpoint, payload, rec, route,
                                                plan))
    if opened.shaped.fmt is not None:
        return await stream_answer(request, opened, rec, table.config)
    return await _whole(opened, rec, plan.way(opened.config), counting)


def parse_messages(raw: bytes, rec: RequestRecord, table: RouteTable) -> dict[str, Any]:
    """The request's JSON object with what routing needs checked (a 400 naming the field).
    The rest is judged by the runtime serving /v1/messages, or checked whole before the
    translation (`messages_plan`): the gateway is never stricter than the runtime."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    note_named(rec, payload, table)   # logged even if refused
    try:
        validate_route(payload)
    except TranslationError as err:
        raise BadRequest(err.message, param=err.param) from None
    return payload


async def _whole(opened: Opened, rec: RequestRecord, way: Way | None, counting: bool
                 ) -> web.Response:
    def shaped(body: bytes) -> tuple[bytes, bytes, dict[str, Any] | None]:
        """The runtime's body, the client's answer, and its usage when known already."""
        if way is Way.NATIVE:
            return body, rewrite_model(body, opened.patterns), None
        if way is Way.TOKENIZER:
            return body, tokenizer_count(body), None
        return body, *translated_whole(body, opened.public)

    body, out, usage = await read_whole(opened, rec, shaped)

    def after_send(error: BaseException | None) -> None:
        if counting:
            rec.usage = {}   # nothing generated: no tokens to charge, and none missing
        else:   # a runtime's own message is parsed only now, after the client has it
            rec.usage = native_whole(body) if way is Way.NATIVE else usage
        opened.finish(error)

    rec.after_send = after_send
    return web.Response(body=out, status=200, headers={"Content-Type": "application/json"})
