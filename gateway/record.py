"""What one request did, filled in as it flows; logged and measured at its end.

Also what names a request: the client's own X-Request-ID is kept and echoed back,
but runtimes get a UUID, the one form every runtime accepts (llama-cpp-python's
server answers 400 to any other); the log line holds both when they differ.
"""

from __future__ import annotations

import random
import re
import time
from typing import Any

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def new_request_id() -> str:
    """A random UUID4 string, without a getrandom syscall per request: an id names a
    request in logs, it guards nothing. Version nibble 4, variant bits 10; six small
    draws format faster than one 128-bit number cut into fields."""
    bits = random.getrandbits
    return "%08x-%04x-4%03x-%04x-%08x%04x" % (bits(32), bits(16), bits(12),
                                              bits(14) | 0x8000, bits(32), bits(16))


def client_request_id(given: str) -> str:
    """The client's X-Request-ID when it is a usable one, else a new id."""
    if 0 < len(given) <= 128 and given.isprintable() and given.isascii():
        return given
    return new_request_id()


def upstream_request_id(request_id: str) -> str:
    """What runtimes get as X-Request-ID: the request's own id if it is a UUID."""
    return request_id if len(request_id) == 36 and _UUID.fullmatch(request_id) else new_request_id()


class RequestRecord:
    __slots__ = ("request_id", "upstream_id", "endpoint", "api", "after_send", "model", "backend", "status", "started",
                 "upstream_wait", "first_token_at", "last_token_at", "usage", "stream",
                 "retries", "fallback", "key_name", "error", "aborted", "trace",
                 "explain", "route", "ticket")

    def __init__(self, request_id: str, endpoint: str) -> None:
        self.request_id = request_id
        self.upstream_id: str | None = None   # made when the first try goes out
        self.endpoint = endpoint
        self.api: Any = None          # its row of gateway.endpoints (None: not an API route)
        # Bookkeeping that waits until the answer was sent (the middleware runs it).
        self.after_send: Any = None
        self.model = ""               # a configured public name, or "" for anything else
        self.backend = ""             # the backend that answered (or failed last)
        self.status = 0
        self.started = time.perf_counter()
        self.upstream_wait = 0.0      # seconds spent waiting on runtimes
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.usage: dict[str, Any] | None = None
        self.stream = False
        self.retries = 0
        self.fallback: str | None = None
        self.key_name: str | None = None
        self.error: str | None = None
        self.aborted: str | None = None   # why a stream ended early
        self.trace: Any = None            # a tracing.spans.RequestTrace while tracing is on
        self.explain = False              # the client sent X-Gateway-Explain: 1
        self.route: str | None = None     # then the last pick's X-Gateway-Route
        self.ticket: Any = None           # its dispatch.scheduler.Ticket: key, class, slot

    def id_for_runtimes(self) -> str:
        """The X-Request-ID every try of this request sends upstream."""
        if self.upstream_id is None:
            self.upstream_id = upstream_request_id(self.request_id)
        return self.upstream_id

    def log_fields(self, duration: float) -> dict[str, Any]:
        usage = self.usage or {}
        ttft = (self.first_token_at - self.started) if self.first_token_at else None
        fields = {
            "request_id": self.request_id, "endpoint": self.endpoint, "model": self.model,
            "backend": self.backend, "status": self.status, "stream": self.stream,
            "duration_s": round(duration, 6),
            "ttft_s": round(ttft, 6) if ttft is not None else None,
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "retries": self.retries, "fallback": self.fallback, "key": self.key_name,
            "error": self.error, "aborted": self.aborted,
        }
        if self.upstream_id is not None and self.upstream_id != self.request_id:
            fields["upstream_request_id"] = self.upstream_id
        if self.trace is not None:
            fields["trace_id"] = self.trace.trace_id
        return fields
