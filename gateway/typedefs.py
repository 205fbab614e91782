"""Typed keys for the app's and the request's state.

The types are imported for type checking only: every floor may read these keys, and none
of them may make this module import the floors above it (the state, the workers) at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .console.parts import Console
    from .conversations import Conversations
    from .log import AccessLog
    from .record import RequestRecord
    from .state import Gateway
    from .workers.leader import Leader
    from .workers.rundir import RunDir

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
CONFIG_PATH: web.AppKey[str] = web.AppKey("config_path")
CONFIG_SEEN: web.AppKey[tuple] = web.AppKey("config_seen")   # the file's identity when its config was read
RUN_DIR: web.AppKey[RunDir] = web.AppKey("run_dir")     # the server's shared directory (--workers N)
LEADER: web.AppKey[Leader] = web.AppKey("leader")      # who measures for the server (--workers N)
SUPERVISOR: web.AppKey[int] = web.AppKey("supervisor")   # the master's pid, in a worker of --workers N
ACCESS_LOG: web.AppKey[AccessLog] = web.AppKey("access_log")
# Responses the gateway stores for runtimes that keep none (gateway/conversations).
CONVERSATIONS: web.AppKey[Conversations] = web.AppKey("conversations")
CONSOLE: web.AppKey[Console] = web.AppKey("console")   # the operator console's sessions, tail, history
RECORD: web.RequestKey[RequestRecord] = web.RequestKey("record")

__all__ = ["ACCESS_LOG", "GATEWAY", "CONFIG_PATH", "CONFIG_SEEN", "LEADER", "RUN_DIR", "SUPERVISOR",
           "CONSOLE", "CONVERSATIONS", "RECORD"]
