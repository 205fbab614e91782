"""Gateway errors in Anthropic's shape, for the endpoints whose row says `error_shape: anthropic`.

The middleware renders every error of those paths here; a stream that broke after its first
byte ends with `relay/anthropic.stream_error_event`. Statuses stay the gateway's own (a 503 is
still a 503); the error type is Anthropic's for that status. A runtime's own 4xx passed through
keeps its body when it is already Anthropic-shaped (a runtime serving /v1/messages itself)
and is re-shaped otherwise (an OpenAI-shaped error from the translated chat path).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import GatewayError, UpstreamStatus
from ..translate.anthropic import error_body, error_type_for_status
from ..relay.wire import loads_object

MAX_MESSAGE = 2000   # a runtime's error text, cut: it may be an HTML page


def anthropic_error_json(err: GatewayError) -> bytes:
    """The body of any gateway error on an Anthropic path (the middleware's ERROR_BODIES)."""
    if isinstance(err, UpstreamStatus):
        return _runtime_error(err)
    return orjson.dumps(error_body(error_type_for_status(err.status), err.message))


def _runtime_error(err: UpstreamStatus) -> bytes:
    parsed = loads_object(err.body)
    inner = parsed.get("error") if parsed is not None else None
    if parsed is not None and parsed.get("type") == "error" and isinstance(inner, dict) \
            and isinstance(inner.get("type"), str):
        return err.body   # already Anthropic's shape, as the runtime made it
    return orjson.dumps(error_body(error_type_for_status(err.status),
                                   _message_of(parsed, inner, err)))


def _message_of(parsed: dict[str, Any] | None, inner: Any, err: UpstreamStatus) -> str:
    """The runtime's message from the shapes runtimes use: OpenAI's `error.message`,
    a plain `error` string, FastAPI's `detail`, or `message`; else the raw text."""
    if isinstance(inner, dict) and isinstance(inner.get("message"), str):
        return inner["message"][:MAX_MESSAGE]
    if parsed is not None:
        for key in ("error", "detail", "message"):
            if isinstance(parsed.get(key), str):
                return parsed[key][:MAX_MESSAGE]
    text = err.body.decode("utf-8", "replace").strip()[:MAX_MESSAGE]
    return text or f"the runtime answered {err.status}"
