"""Reading and checking a client's request body before anything goes upstream."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from ..dispatch import RouteTable
from ..endpoints import Endpoint
from ..errors import BadRequest, BodyTooLarge, RequestTimeout
from ..record import RequestRecord

BODY_READ_TIMEOUT_S = 60


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit`."""
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
    if request.content.is_eof():
        # The usual case: the whole body came with the headers and is taken from the
        # buffer as it is, with no timer and no wait.
        body = _buffered(request)
        if len(body) > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        return body
    parts: list[bytes] = []
    size = 0
    try:
        # A body trickled in byte by byte would otherwise hold its connection forever.
        async with asyncio.timeout(BODY_READ_TIMEOUT_S):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
                parts.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within "
                             f"{BODY_READ_TIMEOUT_S:g} s") from None
    except web.RequestPayloadError as exc:
        # e.g. a Content-Encoding whose bytes do not decode: the client's fault, not ours.
        raise BadRequest(f"the request body could not be read: {_first_line(exc)}") from None
    return b"".join(parts)


def _buffered(request: web.Request) -> bytes:
    try:
        return request.content.read_nowait()
    except web.RequestPayloadError as exc:
        raise BadRequest(f"the request body could not be read: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def note_named(rec: RequestRecord, payload: Any, table: RouteTable) -> None:
    """What a parsed body names, put on the record before any check may refuse it, so the
    log line of a refused request still says it: the model (when it is a configured one:
    the record's model is also a metric label) and the stream flag."""
    if not isinstance(payload, dict):
        return
    model = payload.get("model")
    if isinstance(model, str) and table.pool(model) is not None:
        rec.model = model
    rec.stream = payload.get("stream") is True


def parse_payload(raw: bytes, endpoint: Endpoint, rec: RequestRecord | None = None,
                  table: RouteTable | None = None) -> dict[str, Any]:
    """The JSON object of a request to `endpoint`, with the fields the gateway relies on
    checked: the model, the endpoint's required field, and the streaming options. With
    `rec` and `table`: what it names is noted first (`note_named`)."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if rec is not None and table is not None:
        note_named(rec, payload, table)
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string", param="model")
    if endpoint.required is not None:
        _check_required(payload, *endpoint.required)
    for field, kinds in endpoint.optional:
        value = payload.get(field)
        if value is not None and not isinstance(value, kinds):
            raise BadRequest(f"'{field}' must be a {_type_names(kinds)}", param=field)
    stream = payload.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", param="stream")
    if stream and not endpoint.streams:
        raise BadRequest(f"{endpoint.name} cannot be streamed", param="stream")
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    return payload


def _check_required(payload: dict[str, Any], field: str, kinds: tuple[type, ...]) -> None:
    value = payload.get(field)
    if value is None:
        raise BadRequest(f"'{field}' is required", param=field)
    if not isinstance(value, kinds) or (isinstance(value, list) and not value):
        raise BadRequest(f"'{field}' must be a non-empty {_type_names(kinds)}", param=field)
    if field == "messages" and not all(isinstance(m, dict) for m in value):
        raise BadRequest("each of 'messages' must be an object", param="messages")


def _type_names(kinds: type | tuple[type, ...]) -> str:
    names = {str: "string", list: "array", bool: "boolean", dict: "object"}
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)
