"""Where the one JSON line per request goes.

`AccessLog` hands each line to the `gateway.access` logger, so it follows the
logging setup (and tests can capture it). `gateway serve` uses `StderrAccessLog`
instead: at thousands of requests a second the logging machinery and one write
per line were a tenth of the gateway's CPU per request, so lines are buffered and
go to stderr in one write every FLUSH_AFTER_S (or sooner, once FLUSH_AT_BYTES are
waiting), as nginx's `access_log ... buffer= flush=` does.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import orjson

from .log import access_logger


class AccessLog:
    def enabled(self) -> bool:
        return access_logger.isEnabledFor(logging.INFO)

    def write(self, fields: dict[str, Any]) -> None:
        access_logger.info("%s", orjson.dumps(fields).decode())

    def flush(self) -> None:
        pass


FLUSH_AFTER_S = 0.05
FLUSH_AT_BYTES = 64 * 1024


class StderrAccessLog(AccessLog):
    """Buffers lines for up to `flush_after_s`, then writes them at once."""

    def __init__(self, fd: int = 2, flush_after_s: float = FLUSH_AFTER_S) -> None:
        self._fd = fd
        self._flush_after_s = flush_after_s
        self._lines: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def write(self, fields: dict[str, Any]) -> None:
        line = orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_AT_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_after_s,
                                                                self.flush)

    def flush(self) -> None:
        """Write what is buffered now (also what app cleanup calls at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data = memoryview(b"".join(self._lines))
        self._lines.clear()
        self._size = 0
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError:
            pass   # stderr gone (a closed pipe): the gateway keeps serving
