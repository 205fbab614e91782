"""Anthropic's error shape, and the error a malformed Messages request raises.

    TranslationError   a request that is not valid Anthropic, or that chat completions
                       cannot express; always a 400 invalid_request_error naming the field

Anthropic answers errors as `{"type": "error", "error": {"type": ..., "message": ...}}`, in
a body and, once a stream has begun, as an `event: error` SSE event. Its error types differ
from OpenAI's, so the status → type table lives here, next to the shape.
"""

from __future__ import annotations

from typing import Any

import orjson

# The status codes Anthropic documents, with its own type for each; other 4xx are
# invalid_request_error and other 5xx api_error, as its reference says.
_TYPES_BY_STATUS = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 409: "conflict_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error",
}


class TranslationError(Exception):
    """A request the gateway refuses before any runtime sees it (a 400).

    `param` is the dotted path of the offending field (`messages.1.content.0.type`), or None
    when the body as a whole is wrong; the message starts with it, as Anthropic's do."""

    status = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        full = f"{param}: {message}" if param else message
        super().__init__(full)
        self.message = full
        self.param = param

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.error_type, self.message)


def error_type_for_status(status: int) -> str:
    """Anthropic's error type for an HTTP status the gateway answers with."""
    known = _TYPES_BY_STATUS.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if status < 500 else "api_error"


def error_body(error_type: str, message: str) -> dict[str, Any]:
    """An Anthropic error object, for a JSON body or an `error` event."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """One complete SSE event as Anthropic frames them: `event:` line, `data:` line, blank."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_event(error_type: str, message: str) -> bytes:
    """The `event: error` that ends a stream which broke after its first byte."""
    return sse_event("error", error_body(error_type, message))
