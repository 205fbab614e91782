"""The console's pages and assets, served from the package (`static/`), and sign-in/out.

Every answer carries a strict Content-Security-Policy (scripts, styles, images and
connections from the gateway only, no inline script or style, no framing, forms post
only to the gateway), and is not cached. The admin key is posted once in the login
form's body, compared in constant time, and never kept: the session cookie stands for it.
"""

from __future__ import annotations

import functools
import time
from importlib import resources
from types import MappingProxyType
from urllib.parse import parse_qs

from aiohttp import web

from ..limits.auth import same_secret
from ..errors import NotFound, Unauthorized
from ..log import server_logger
from ..typedefs import CONSOLE
from .guard import admin_key, session_of
from .session import COOKIE, csrf_ok, same_origin, set_cookie

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = MappingProxyType({
    "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Resource-Policy": "same-origin",
})
TYPES = MappingProxyType({".html": "text/html", ".js": "text/javascript", ".css": "text/css"})
LOGIN_FORM_MAX = 4096   # bytes: the form has one field
ERROR_MARK = "<!--error-->"
WRONG_KEY = '<p class="error" role="alert">That is not the admin key.</p>'


@functools.cache
def static_files() -> MappingProxyType:
    """The files of `static/`, read once (at the first page asked for), by name."""
    files = {}
    for item in resources.files(__package__).joinpath("static").iterdir():
        suffix = item.name[item.name.rfind("."):]
        if item.is_file() and suffix in TYPES:
            files[item.name] = (item.read_bytes(), TYPES[suffix])
    return MappingProxyType(files)


def secured(response: web.StreamResponse, cache: str = "no-store") -> web.StreamResponse:
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = cache
    return response


def _file(name: str, status: int = 200, error: str = "") -> web.Response:
    body, content_type = static_files()[name]
    if error:
        body = body.replace(ERROR_MARK.encode(), error.encode())
    return secured(web.Response(body=body, status=status, content_type=content_type,
                                charset="utf-8"))


async def console_page(request: web.Request) -> web.StreamResponse:
    admin_key(request)
    if session_of(request) is None:
        return _see_other("/admin/login")
    return _file("console.html")


async def login_page(request: web.Request) -> web.StreamResponse:
    admin_key(request)
    if session_of(request) is not None:
        return _see_other("/admin/")
    return _file("login.html")


async def login(request: web.Request) -> web.StreamResponse:
    key = admin_key(request)
    if not same_origin(request):
        raise Unauthorized("sign in from the gateway's own login page")
    raw = await request.content.read(LOGIN_FORM_MAX + 1)
    given = parse_qs(raw[:LOGIN_FORM_MAX].decode("utf-8", "replace")).get("key", [""])[0]
    if len(raw) > LOGIN_FORM_MAX or not same_secret(given, key):
        server_logger.warning("console: a sign-in with a wrong admin key from %s",
                              request.remote)
        return _file("login.html", status=401, error=WRONG_KEY)
    cookie, session = request.app[CONSOLE].sessions.start()
    response = _see_other("/admin/")
    set_cookie(request, response, cookie, max_age=max(0, int(session.expires - time.time())))
    server_logger.info("console: signed in from %s", request.remote)
    return response


async def logout(request: web.Request) -> web.Response:
    admin_key(request)
    sessions = request.app[CONSOLE].sessions
    session = session_of(request)
    if session is not None:
        if not csrf_ok(request, sessions, session):
            raise Unauthorized("signing out needs the page's X-CSRF-Token header")
        sessions.end(session)
        server_logger.info("console: signed out from %s", request.remote)
    response = web.json_response({"signed_out": True})
    response.del_cookie(COOKIE, path="/admin")
    response.headers["Clear-Site-Data"] = '"cache", "cookies", "storage"'   # over TLS
    return secured(response)


async def asset(request: web.Request) -> web.Response:
    admin_key(request)
    name = request.match_info["name"]
    if name not in static_files() or name.endswith(".html"):
        raise NotFound("no such console file")
    return secured(_file(name), cache="no-cache")


def _see_other(location: str) -> web.Response:
    return secured(web.Response(status=303, headers={"Location": location}))
