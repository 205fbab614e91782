"""Who may use the admin API from a browser: the console's session, checked per request."""

from __future__ import annotations

from aiohttp import web

from ..errors import Forbidden, NotFound
from ..typedefs import CONSOLE, GATEWAY
from .session import COOKIE, Session, csrf_ok

SAFE_METHODS = ("GET", "HEAD")


class CrossSiteRefused(Forbidden):
    code = "csrf_check_failed"


def admin_key(request: web.Request) -> str:
    """The admin key; without one there is no console (404, as for the admin API)."""
    key = request.app[GATEWAY].config.server.admin_key
    if not key:
        raise NotFound("the admin console is disabled: set server.admin_key to enable it")
    return key


def session_of(request: web.Request) -> Session | None:
    console = request.app.get(CONSOLE)
    if console is None:
        return None
    return console.sessions.find(request.cookies.get(COOKIE))


def admitted_by_session(request: web.Request) -> bool:
    """True when the console's session cookie admits this request; a state-changing one
    must also pass the CSRF check, else it is refused here (403), not merely unadmitted."""
    session = session_of(request)
    if session is None:
        return False
    sessions = request.app[CONSOLE].sessions
    if request.method not in SAFE_METHODS and not csrf_ok(request, sessions, session):
        raise CrossSiteRefused("a console call that changes state needs the page's "
                               "X-CSRF-Token header and the gateway's own origin")
    return True
