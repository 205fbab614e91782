"""What one request did, filled in as it flows; logged and measured at its end."""

from __future__ import annotations

import time
from typing import Any


class RequestRecord:
    __slots__ = ("request_id", "endpoint", "model", "backend", "status", "started",
                 "upstream_wait", "first_token_at", "last_token_at", "usage", "stream",
                 "retries", "fallback", "key_name", "error", "aborted")

    def __init__(self, request_id: str, endpoint: str) -> None:
        self.request_id = request_id
        self.endpoint = endpoint
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

    def log_fields(self, duration: float) -> dict[str, Any]:
        usage = self.usage or {}
        ttft = (self.first_token_at - self.started) if self.first_token_at else None
        return {
            "request_id": self.request_id, "endpoint": self.endpoint, "model": self.model,
            "backend": self.backend, "status": self.status, "stream": self.stream,
            "duration_s": round(duration, 6),
            "ttft_s": round(ttft, 6) if ttft is not None else None,
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "retries": self.retries, "fallback": self.fallback, "key": self.key_name,
            "error": self.error, "aborted": self.aborted,
        }
