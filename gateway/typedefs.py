"""Typed keys for the app's and the request's state."""

from aiohttp import web

from .accesslog import AccessLog
from .conversations import Conversations
from .leader import Leader
from .record import RequestRecord
from .rundir import RunDir
from .state import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
CONFIG_PATH = web.AppKey("config_path", str)
CONFIG_SEEN = web.AppKey("config_seen", tuple)   # the file's identity when its config was read
RUN_DIR = web.AppKey("run_dir", RunDir)     # the server's shared directory (--workers N)
LEADER = web.AppKey("leader", Leader)      # who measures for the server (--workers N)
SUPERVISOR = web.AppKey("supervisor", int)   # the master's pid, in a worker of --workers N
ACCESS_LOG = web.AppKey("access_log", AccessLog)
# Responses the gateway stores for runtimes that keep none (gateway/conversations).
CONVERSATIONS = web.AppKey("conversations", Conversations)
RECORD = web.RequestKey("record", RequestRecord)

__all__ = ["ACCESS_LOG", "CONVERSATIONS", "GATEWAY", "CONFIG_PATH", "CONFIG_SEEN", "LEADER", "RUN_DIR", "SUPERVISOR",
           "RECORD", "RequestRecord"]
