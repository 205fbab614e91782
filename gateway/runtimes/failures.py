"""The one translation of aiohttp and asyncio errors into `gateway.errors` errors.

Every call that talks to a runtime runs inside `translated(phase, ...)`: what the
exception means depends on how far the exchange got, so each phase names its own
messages, but the mapping from exception types to reasons lives only here:

    asyncio/aiohttp timeouts  -> UpstreamTimeout (connect, first byte, idle) or DeadlineExceeded
    ClientConnectorError      -> UpstreamError(connect)
    any other ClientError     -> UpstreamError(disconnected / upstream_closed)

A runtime's own error status becomes `status_error(...)`: retryable (429, 5xx but
501) as UpstreamError, anything else as UpstreamStatus passed through to the client.
"""

from __future__ import annotations

from enum import Enum
from types import TracebackType

import aiohttp

from ..config import BackendConfig
from ..errors import (DeadlineExceeded, GatewayError, Reason, UpstreamError, UpstreamStatus,
                      UpstreamTimeout)
from .scrub import scrub_secrets

# Status codes after which another backend may well succeed.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_ERROR_BODY = 64 * 1024


class Phase(Enum):
    OPEN = "open"        # sending the request, until the answer's headers
    READ = "read"        # reading a whole answer
    STREAM = "stream"    # reading a stream's chunks
    GET = "get"          # a health check or model discovery


class translated:
    """Context manager: re-raise lower-layer errors of `phase` as gateway errors."""

    __slots__ = ("phase", "backend", "by_deadline", "what")

    def __init__(self, phase: Phase, backend: BackendConfig, *, by_deadline: bool = False,
                 what: str = "") -> None:
        self.phase = phase
        self.backend = backend
        self.by_deadline = by_deadline   # a timeout here is the request's overall deadline
        self.what = what                 # for GET: the URL

    def __enter__(self) -> translated:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc is None or isinstance(exc, GatewayError):
            return False
        if isinstance(exc, (TimeoutError, aiohttp.ClientError)):
            raise self._translate(exc) from exc
        return False

    def _translate(self, exc: BaseException) -> UpstreamError:
        name, t, phase = self.backend.name, self.backend.timeouts, self.phase
        if phase is Phase.GET:
            if isinstance(exc, TimeoutError):
                return UpstreamTimeout(f"GET {self.what} timed out",
                                       reason=Reason.FIRST_BYTE_TIMEOUT)
            return UpstreamError(f"GET {self.what} failed: {type(exc).__name__}",
                                 reason=Reason.CONNECT)
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return UpstreamTimeout(f"backend {name} did not accept a connection within "
                                   f"{t.connect_s:g} s", reason=Reason.CONNECT_TIMEOUT)
        if isinstance(exc, TimeoutError):
            if phase is Phase.OPEN:
                if self.by_deadline:
                    return DeadlineExceeded()
                return UpstreamTimeout(f"backend {name} did not answer within "
                                       f"{t.first_byte_s:g} s", reason=Reason.FIRST_BYTE_TIMEOUT)
            return UpstreamTimeout("the runtime went silent mid-stream" if phase is Phase.STREAM
                                   else "the runtime stopped sending its answer",
                                   reason=Reason.IDLE_TIMEOUT)
        if phase is Phase.OPEN:
            if isinstance(exc, aiohttp.ClientConnectorError):
                return UpstreamError(f"backend {name} refused the connection",
                                     reason=Reason.CONNECT)
            return UpstreamError(f"backend {name} failed: {type(exc).__name__}",
                                 reason=Reason.DISCONNECTED)
        what = "the stream" if phase is Phase.STREAM else "its answer"
        return UpstreamError(f"the runtime broke off {what}: {type(exc).__name__}",
                             reason=Reason.UPSTREAM_CLOSED)


async def status_error(backend: BackendConfig, resp: aiohttp.ClientResponse) -> GatewayError:
    """The error for a runtime's answer of status >= 400 (its connection released)."""
    try:
        body = await resp.content.read(MAX_ERROR_BODY)
    except aiohttp.ClientError:
        body = b""
    finally:
        resp.release()
    status = resp.status
    body = scrub_secrets(body, backend)   # a runtime may echo the key it was sent
    if status in RETRYABLE_STATUSES or (status >= 500 and status != 501):
        retry_after = _retry_after(resp.headers.get("Retry-After"))
        return UpstreamError(f"backend {backend.name} answered {status}",
                             reason=Reason.for_status(status), retry_after=retry_after)
    return UpstreamStatus(status, body, resp.headers.get("Content-Type", "application/json"))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
