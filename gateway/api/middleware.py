"""The one middleware every request passes: request id, error rendering, sending the
answer, then the bookkeeping that waited for it, the log line and metrics."""

from __future__ import annotations

import asyncio
import time
from types import MappingProxyType
from typing import Callable, Mapping

from aiohttp import web

from ..config import Config
from ..dispatch import Opened
from ..endpoints import BY_ROUTE, Endpoint, ErrorShape
from ..errors import BadRequest, BodyTooLarge, GatewayError, NotFound
from ..log import server_logger
from ..record import RequestRecord, client_request_id
from ..relay.response_ids import IdRewriter
from ..relay.stream import relay
from ..typedefs import ACCESS_LOG, GATEWAY, RECORD
from .anthropic_shape import anthropic_error_json


# How each error shape of `endpoints` renders a GatewayError (a runtime's own 4xx body,
# UpstreamStatus, renders as itself in the OpenAI shape). A new shape is a new entry.
def _openai_body(err: GatewayError) -> bytes:
    return err.to_json()


ERROR_BODIES: Mapping[ErrorShape, Callable[[GatewayError], bytes]] = MappingProxyType({
    ErrorShape.OPENAI: _openai_body,
    ErrorShape.ANTHROPIC: anthropic_error_json,   # a runtime's 4xx re-shaped unless it already is
})


def error_body(err: GatewayError, shape: ErrorShape = ErrorShape.OPENAI) -> bytes:
    return ERROR_BODIES.get(shape, _openai_body)(err)


def error_response(err: GatewayError, shape: ErrorShape = ErrorShape.OPENAI) -> web.Response:
    resp = web.Response(status=err.status, body=error_body(err, shape), headers=err.headers())
    # A runtime's own body passed through keeps its type; a body made for a shape is JSON.
    passed = shape is ErrorShape.OPENAI and getattr(err, "content_type", None)
    resp.content_type = (passed or "application/json").split(";")[0]
    return resp


def _from_http_exception(exc: web.HTTPException) -> GatewayError:
    if exc.status == 413:
        return BodyTooLarge(exc.text or "request body too large")
    if exc.status == 404:
        return NotFound("no such route")
    err = BadRequest(exc.reason or "bad request")
    err.status = exc.status
    if exc.status == 405:
        err.code = "method_not_allowed"
    return err


@web.middleware
async def gateway_middleware(request: web.Request, handler) -> web.StreamResponse:
    # A CORS preflight is the browser asking, not an API request: not logged or measured.
    endpoint = endpoint_of(request) if request.method != "OPTIONS" else None
    rec = RequestRecord(client_request_id(request.headers.get("X-Request-ID", "")),
                        endpoint.name if endpoint is not None else "")
    rec.api = endpoint
    rec.explain = request.headers.get("X-Gateway-Explain") == "1"
    request[RECORD] = rec
    try:
        resp = await _answer(request, handler, rec, endpoint.error_shape if endpoint is not None
                             else _shape_of_path(request.path))
        await _send(request, resp, rec)
        return resp
    finally:
        _finish(request, rec)


def _shape_of_path(path: str) -> ErrorShape:
    """An unknown path under an API's prefix gets that API's error shape: an Anthropic
    client calling a /v1/messages path the gateway lacks still reads Anthropic's shape."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return ErrorShape.ANTHROPIC
    return ErrorShape.OPENAI


def endpoint_of(request: web.Request) -> Endpoint | None:
    """The row of `endpoints` this request was routed to (None for other routes)."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return BY_ROUTE.get((request.method, resource.canonical))


async def _send(request: web.Request, resp: web.StreamResponse, rec: RequestRecord) -> None:
    """Send an answer not sent yet (a stream was, as it came), then the bookkeeping that
    waited for it: the client need not wait for usage parsing or the backend's release."""
    error: BaseException | None = None
    try:
        if not resp.prepared:
            await resp.prepare(request)
            await resp.write_eof()
    except ConnectionError:
        rec.status = 499   # gone before its answer: aiohttp closes up quietly
    except BaseException as exc:
        error = exc
        raise
    finally:
        if rec.after_send is not None:
            rec.after_send(error)


async def _answer(request: web.Request, handler, rec: RequestRecord,
                  shape: ErrorShape) -> web.StreamResponse:
    """The handler's response, or the error in the endpoint's shape for whatever it raised."""
    resp: web.StreamResponse | None = None
    try:
        resp = await handler(request)
    except GatewayError as err:
        resp = error_response(err, shape)
        rec.error = err.message
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = error_response(_from_http_exception(exc), shape)
    except asyncio.CancelledError:
        rec.status = 499   # the client left before an answer; logged, not sent
        raise
    except Exception:
        server_logger.exception("unexpected error on %s %s", request.method, request.path)
        err = GatewayError("internal error in the gateway; see its log for request "
                           + rec.request_id)
        resp = error_response(err, shape)
        rec.error = "internal error"
    finally:
        if resp is not None:
            # A handler that sent its answer itself sets 499 when the client left.
            rec.status = rec.status or resp.status
            if not resp.prepared:
                stamp_response(request, resp, rec)
                if request.content.exception() is not None:
                    # A body that broke mid-way leaves the connection unusable. Marking it
                    # read stops aiohttp reading on after the answer, meeting the same
                    # error and logging it as an unhandled exception with a traceback.
                    resp.force_close()
                    request.content.feed_eof()
    return resp


def _finish(request: web.Request, rec: RequestRecord) -> None:
    duration = time.perf_counter() - rec.started
    if rec.trace is not None:
        rec.trace.end(rec)
    if rec.endpoint:
        gateway = request.app[GATEWAY]
        gateway.limiter.charge(rec.key_name, rec.usage)   # tpm: the real usage, once known
        if rec.ticket is not None and gateway.tenants.finished(rec.ticket, rec.usage):
            gateway.dispatcher.queue.notify()   # a slot of its key came free
        gateway.metrics.record_request(rec, duration)
    log = request.app[ACCESS_LOG]
    if log.enabled():
        fields = rec.log_fields(duration)
        if not rec.endpoint:
            fields["path"] = request.path
        log.write(fields)


async def stream_answer(request: web.Request, opened: Opened, rec: RequestRecord,
                        config: Config, ids: IdRewriter | None = None) -> web.StreamResponse:
    """A streamed answer, sent by the handler as it comes: its format made for the opened
    try, its response stamped, and both handed to the one relay."""
    fmt = opened.shaped.fmt.make(opened, ids, rec.trace)   # type: ignore[union-attr]
    resp = web.StreamResponse(status=200, headers=fmt.headers())
    stamp_response(request, resp, rec)
    return await relay(request, resp, opened, fmt, rec, request.app[GATEWAY].drain,
                       config.server.client_idle_s)


def stamp_response(request: web.Request, resp: web.StreamResponse, rec: RequestRecord) -> None:
    """The gateway's own headers, on every answer before it is sent: request id, the
    backend that answered, and a keyed request's x-ratelimit-* headers."""
    headers = resp.headers
    headers["X-Request-ID"] = rec.request_id
    if rec.backend:
        headers["X-Gateway-Backend"] = rec.backend
    if rec.route is not None:
        headers["X-Gateway-Route"] = rec.route   # only asked for: X-Gateway-Explain: 1
    if rec.key_name:
        headers.update(request.app[GATEWAY].limiter.headers(rec.key_name))
