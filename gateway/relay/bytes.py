"""Relaying answers of any content type (speech audio, images) as bytes as they come.

Nothing is parsed on the way: the bytes reach the client as the runtime sends them.
Such an answer has no error event to end with, so one that breaks after its first
byte is cut off (the connection closes before the body's end), never ended cleanly.
A JSON answer's usage, when it has one (gpt-image style), is read from its last bytes.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson
from aiohttp import web

from ..dispatch import Opened
from ..errors import Reason, UpstreamError
from ..record import RequestRecord
from .chat import api_usage
from ..typedefs import GATEWAY
from ..api.middleware import stamp_response
from .stream_end import CLIENT_GONE, drain_cut

TAIL = 4096
# A usage object with at most one level of nesting (`input_tokens_details`).
_USAGE = re.compile(rb'"usage"\s*:\s*(\{(?:[^{}]|\{[^{}]*\})*\})')


async def relay_bytes(request: web.Request, opened: Opened, rec: RequestRecord,
                      has_usage: bool) -> web.StreamResponse:
    drain = request.app[GATEWAY].drain
    content_type = opened.response.content_type
    resp = web.StreamResponse(status=200, headers={"Content-Type": content_type,
                                                   "Cache-Control": "no-cache"})
    stamp_response(request, resp, rec)
    task = asyncio.current_task()
    drain.track(task)
    error: BaseException | None = None
    tail = b""
    clock = time.perf_counter
    try:
        await resp.prepare(request)
        await resp.write(opened.first)
        rec.first_token_at = rec.last_token_at = clock()
        tail = opened.first[-TAIL:]
        waited = clock()
        async for data in opened.chunks:   # type: ignore[union-attr]
            now = clock()
            rec.upstream_wait += now - waited
            await resp.write(data)
            rec.last_token_at = now
            tail = data[-TAIL:] if len(data) >= TAIL else (tail + data)[-TAIL:]
            waited = clock()
    except UpstreamError as err:
        error = err
        rec.aborted, rec.error = err.reason, err.message
        _cut(request)
    except asyncio.CancelledError as exc:
        error = exc
        if not drain_cut(drain, task, rec):
            raise
        _cut(request)   # our drain deadline: cut it off, it cannot say why
    except CLIENT_GONE as exc:
        error = exc
        rec.aborted, rec.status = Reason.CLIENT_LEFT, 499
    finally:
        drain.untrack(task)
        opened.finish(error)
        rec.usage = _usage(tail, content_type) if has_usage else {}
    if error is None:
        await resp.write_eof()
    return resp


def _cut(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def _usage(tail: bytes, content_type: str) -> dict[str, Any]:
    """The usage at the end of a JSON answer; {} when there is none (audio, most images)."""
    if "json" not in content_type:
        return {}
    found = _USAGE.findall(tail)
    if not found:
        return {}
    try:
        return api_usage(orjson.loads(found[-1])) or {}
    except orjson.JSONDecodeError:
        return {}
