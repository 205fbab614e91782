"""Every error the gateway answers with, in OpenAI's shape.

    GatewayError                 status, type, code; to_json() gives the OpenAI body
    ├── BadRequest               400 invalid_request_error
    ├── Unauthorized             401 invalid_api_key
    ├── Forbidden                403 model_not_allowed
    ├── ModelNotFound            404 model_not_found
    ├── RequestTimeout           408 request_timeout       (a body that never finished)
    │   └── ClientTooSlow        408 client_too_slow       (a stream's client stopped reading)
    ├── BodyTooLarge             413 request_too_large
    ├── RateLimited              429 rate_limit_exceeded   (carries retry_after)
    │   ├── TooManyInFlight      429 concurrency_limit_exceeded (the key's max_concurrency)
    │   └── BudgetExceeded       429 insufficient_quota/budget_exceeded (the key's budget)
    ├── NotImplementedByRuntime  501 capability_not_supported
    ├── UpstreamError            502 upstream_error        (a backend failed; retryable)
    │   └── UpstreamTimeout      504 upstream_timeout
    │       └── DeadlineExceeded 504 (reason "deadline": retries.deadline_s ran out)
    ├── NoHealthyBackend         503 no_healthy_backend    (carries retry_after)
    ├── ShuttingDown             503 shutting_down         (a stream cut when draining ends)
    └── UpstreamStatus           any status: a runtime's 4xx passed through with its own body

Lower-layer errors (aiohttp, asyncio) are translated into these in one place,
`runtimes/failures.py`; they are rendered in one place, `api/middleware.py`.
Why a backend failed is one of the `Reason`s, which are also the `reason` label values
of the upstream-error, retry and stream-abort metrics.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import orjson


class Reason(StrEnum):
    """Why a try on a backend failed (or a stream ended early)."""

    CONNECT = "connect"                   # connection refused or unreachable
    CONNECT_TIMEOUT = "connect_timeout"   # no connection within timeouts.connect_s
    FIRST_BYTE_TIMEOUT = "timeout"        # no answer within timeouts.first_byte_s
    DISCONNECTED = "disconnected"         # the connection broke before the answer's headers
    STREAM_ERROR = "stream_error"         # a 200 stream whose first event is an error
    UPSTREAM_CLOSED = "upstream_closed"   # the runtime broke off its answer
    IDLE_TIMEOUT = "idle_timeout"         # the runtime went silent for timeouts.idle_s
    DEADLINE = "deadline"                 # retries.deadline_s ran out: no verdict on the backend
    STATUS_429 = "429"
    STATUS_500 = "500"
    STATUS_502 = "502"
    STATUS_503 = "503"
    STATUS_504 = "504"
    STATUS_OTHER = "5xx"                  # any other 5xx but 501
    # Why a stream ended early that is not the runtime's doing.
    CLIENT_LEFT = "client_left"
    CLIENT_SLOW = "client_slow"           # the client did not read for server.client_idle_s
    SHUTDOWN = "shutdown"
    ERROR = "error"

    @classmethod
    def for_status(cls, status: int) -> Reason:
        try:
            return cls(str(status))
        except ValueError:
            return cls.STATUS_OTHER


# Failures that say something about the backend's health: they count towards ejection.
# A 429 only cools the backend down; a deadline or a client leaving says nothing.
BACKEND_FAULTS = frozenset({
    Reason.CONNECT, Reason.CONNECT_TIMEOUT, Reason.FIRST_BYTE_TIMEOUT, Reason.DISCONNECTED,
    Reason.STREAM_ERROR, Reason.UPSTREAM_CLOSED, Reason.IDLE_TIMEOUT, Reason.STATUS_500,
    Reason.STATUS_502, Reason.STATUS_503, Reason.STATUS_504})


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, int(self.retry_after + 0.999)))}


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class ClientTooSlow(RequestTimeout):
    """A stream cut because its client stopped reading (server.client_idle_s)."""

    code = "client_too_slow"


class BodyTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class TooManyInFlight(RateLimited):
    """The key's max_concurrency held the request for the whole queue wait."""

    code = "concurrency_limit_exceeded"


class BudgetExceeded(RateLimited):
    """The key's token budget for the day or month is spent (OpenAI's quota error)."""

    type = "insufficient_quota"
    code = "budget_exceeded"


class NotImplementedByRuntime(GatewayError):
    status = 501
    type = "invalid_request_error"
    code = "capability_not_supported"


class UpstreamError(GatewayError):
    """A backend failed in a way another backend might not: retryable."""

    status = 502
    type = "server_error"
    code = "upstream_error"

    def __init__(self, message: str, *, reason: Reason = Reason.ERROR,
                 retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.reason = reason


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class DeadlineExceeded(UpstreamTimeout):
    """The request's overall deadline ran out: no more tries, and no verdict on the backend."""

    def __init__(self) -> None:
        super().__init__("no answer before the request's deadline (retries.deadline_s)",
                         reason=Reason.DEADLINE)


class NoHealthyBackend(GatewayError):
    status = 503
    type = "server_error"
    code = "no_healthy_backend"


class ShuttingDown(GatewayError):
    status = 503
    type = "server_error"
    code = "shutting_down"


class UpstreamStatus(GatewayError):
    """A runtime's own non-retryable answer (a 4xx), passed through unchanged."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body
        self.content_type = content_type

    def to_json(self) -> bytes:
        return self.body
