"""Where the one JSON line per request goes.

`AccessLog` hands each line to the `gateway.access` logger, so it follows the
logging setup (and tests can capture it). `gateway serve` uses `StderrAccessLog`
instead: at hundreds of requests a second the logging machinery and one write
per line were a tenth of the gateway's CPU per request, so lines finished in the
same event-loop turn go to stderr in one write.
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


class StderrAccessLog(AccessLog):
    """Buffers lines for the rest of the loop turn, then writes them at once."""

    def __init__(self, fd: int = 2) -> None:
        self._fd = fd
        self._lines: list[bytes] = []

    def write(self, fields: dict[str, Any]) -> None:
        if not self._lines:
            asyncio.get_running_loop().call_soon(self.flush)
        self._lines.append(orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        if not self._lines:
            return
        data = memoryview(b"".join(self._lines))
        self._lines.clear()
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError:
            pass   # stderr gone (a closed pipe): the gateway keeps serving
