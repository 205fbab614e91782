"""The gateway's named loggers, and what it does to aiohttp's."""

import logging

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
