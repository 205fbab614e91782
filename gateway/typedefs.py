"""Typed keys for the app's and the request's state."""

from aiohttp import web

from .record import RequestRecord
from .state import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
CONFIG_PATH = web.AppKey("config_path", str)
RECORD = web.RequestKey("record", RequestRecord)

__all__ = ["GATEWAY", "CONFIG_PATH", "RECORD", "RequestRecord"]
