"""The gateway's named loggers."""

import logging

server_logger = logging.getLogger("gateway.server")
access_logger = logging.getLogger("gateway.access")
health_logger = logging.getLogger("gateway.health")
config_logger = logging.getLogger("gateway.config")
