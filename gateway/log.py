"""The gateway's named loggers, what it does to aiohttp's, and where the one JSON line
per request goes.

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

server_logger = logging.getLogger("gateway.server")
access_logger = logging.getLogger("gateway.access")
health_logger = logging.getLogger("gateway.health")
config_logger = logging.getLogger("gateway.config")
engine_logger = logging.getLogger("gateway.engine")
trace_logger = logging.getLogger("gateway.tracing")
discovery_logger = logging.getLogger("gateway.discovery")
# Where the OTLP/HTTP span exporter logs every failed batch and every retry.
TRACE_EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


class ClientFaultsAreWarnings(logging.Filter):
    """aiohttp logs every malformed request a client sends as an ERROR with a traceback:
    anyone could flood the log with them, and they are no fault of the gateway. The client
    still gets its 400; the log gets one WARNING line that says why."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc_type = record.exc_info[0] if record.exc_info else None
        if exc_type is not None and record.levelno >= logging.ERROR:
            from aiohttp.http_exceptions import HttpProcessingError
            if issubclass(exc_type, (HttpProcessingError, ConnectionError)):
                reason = " ".join(str(record.exc_info[1]).split())[:300]
                record.msg, record.args = f"{record.getMessage()}: {reason}", None
                record.levelno, record.levelname = logging.WARNING, "WARNING"
                record.exc_info = record.exc_text = None
        return True


CLIENT_FAULTS = ClientFaultsAreWarnings()


def quiet_client_faults() -> None:
    """Install the filter on aiohttp's server logger: a process-wide setting, made once
    at process start-up (`serve.prepare_process`), never by building an app."""
    logging.getLogger("aiohttp.server").addFilter(CLIENT_FAULTS)


class OnlyCritical(logging.Filter):
    """The span exporter logs each failed batch and retry; the gateway logs an outage
    once itself (tracing/export.py), so only the exporter's critical records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL


ONLY_CRITICAL = OnlyCritical()


def quiet_trace_exporter() -> None:
    """A process-wide setting, made once at start-up; names a logger, imports nothing."""
    logging.getLogger(TRACE_EXPORTER_LOGGER).addFilter(ONLY_CRITICAL)


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
