"""Whole answers: read and timed in one go, the model rewritten, usage read after sending."""

from __future__ import annotations

import time
from typing import Any, Callable

from aiohttp import web

from ..dispatch import Opened
from ..record import RequestRecord
from .chat import api_usage, rewrite_model
from .wire import loads_object


async def read_whole(opened: Opened, rec: RequestRecord,
                     shape: Callable[[bytes], Any] | None = None) -> Any:
    """The runtime's whole answer (or what `shape` makes of it, timed with the read).

    A failure while reading or shaping gives the backend back with it; after a success
    the caller finishes `opened` once the client has the answer.
    """
    started = time.perf_counter()
    try:
        body = await opened.response.read()
        shaped = body if shape is None else shape(body)
    except BaseException as exc:
        opened.finish(exc)
        raise
    rec.first_token_at = rec.last_token_at = now = time.perf_counter()
    rec.upstream_wait += now - started
    return shaped


def body_response(body: bytes, content_type: str,
                  patterns: tuple[tuple[bytes, bytes], ...]) -> web.Response:
    """A whole JSON answer with the model rewritten."""
    return web.Response(body=rewrite_model(body, patterns), status=200,
                        headers={"Content-Type": content_type or "application/json"})


def body_usage(body: bytes) -> dict[str, Any] | None:
    """The `usage` object of a whole JSON answer, if it has one."""
    parsed = loads_object(body)
    return api_usage(parsed.get("usage")) if parsed is not None else None
