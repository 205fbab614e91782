"""The gateway's named loggers, and what it does to aiohttp's."""

import logging

server_logger = logging.getLogger("gateway.server")
access_logger = logging.getLogger("gateway.access")
health_logger = logging.getLogger("gateway.health")
config_logger = logging.getLogger("gateway.config")
engine_logger = logging.getLogger("gateway.engine")


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
