"""The console's live tail: the last access-log lines of this process, in memory.

`Tail` wraps the app's `AccessLog`: each line still goes where it went, and its fields
(the same dict, untouched) are kept with their time in a ring of `SIZE`. The fields are the
log line's: request id, model, backend, key name, status, timings; never a secret.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from ..log import AccessLog

SIZE = 200
# The API's requests are kept; the console's own calls, probes and scrapes are not.
API_PREFIX = "/v1/"


class Tail(AccessLog):
    def __init__(self, inner: AccessLog, size: int = SIZE) -> None:
        self.inner = inner
        self.lines: deque[tuple[float, dict[str, Any]]] = deque(maxlen=size)
        self.written = 0   # lines ever kept: tells a publisher that something is new

    def enabled(self) -> bool:
        return True   # the console shows lines even when the log itself is off

    def write(self, fields: dict[str, Any]) -> None:
        if self.inner.enabled():
            self.inner.write(fields)
        path = fields.get("path")   # only lines of other routes have one
        if path is None or path.startswith(API_PREFIX):
            self.lines.append((time.time(), fields))
        self.written += 1

    def flush(self) -> None:
        self.inner.flush()


def entries(lines: Any) -> list[dict[str, Any]]:
    """The kept lines as the console shows them, each with its time (oldest first)."""
    return [{"time": round(at, 3), **fields} for at, fields in lines]
