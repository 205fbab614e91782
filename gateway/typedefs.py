"""Typed keys for the app's and the request's state."""

from aiohttp import web

from .accesslog import AccessLog
from .record import RequestRecord
from .state import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
CONFIG_PATH = web.AppKey("config_path", str)
WORKER_PIDS = web.AppKey("worker_pids", tuple)   # the other worker processes (--workers N)
ACCESS_LOG = web.AppKey("access_log", AccessLog)
RECORD = web.RequestKey("record", RequestRecord)

__all__ = ["ACCESS_LOG", "GATEWAY", "CONFIG_PATH", "WORKER_PIDS", "RECORD", "RequestRecord"]
