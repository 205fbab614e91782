"""Console sessions: a signed, expiring cookie that names a session kept on the server.

The cookie holds `<id>.<expires>.<mac>`: a random id (256 bits), its absolute expiry
and an HMAC-SHA256 of both under the server's secret, never the admin key. The server
also keeps the session itself (a hash of its id), so signing out ends it there: a copy
of the cookie is worthless afterwards. Under --workers the secret and the sessions are
files in the server's run directory, so every worker knows them; they are new at every
start of the server (a restart signs everyone out).

A state-changing call made with the cookie must carry the session's CSRF token (an HMAC
of its id, handed to the page by GET /admin/console/session) in `X-CSRF-Token`, and must
not come from another origin (`Origin`, `Sec-Fetch-Site`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from ..workers.rundir import RunDir

COOKIE = "gateway_console"
LIFETIME_S = 12 * 3600
CSRF_HEADER = "X-CSRF-Token"
SECRET_FILE = "console.secret"
SESSIONS_DIR = "console-sessions"


@dataclass(frozen=True)
class Session:
    id: str
    expires: int   # wall-clock seconds


class Sessions:
    def __init__(self, run_dir: RunDir | None = None, lifetime_s: float = LIFETIME_S) -> None:
        self.lifetime_s = lifetime_s
        self._dir: str | None = None
        self._live: dict[str, int] = {}   # one process: id hash -> expiry
        if run_dir is None:
            self._secret = secrets.token_bytes(32)
        else:
            self._secret = shared_secret(run_dir.file(SECRET_FILE))
            self._dir = run_dir.file(SESSIONS_DIR)
            os.makedirs(self._dir, mode=0o700, exist_ok=True)

    def start(self) -> tuple[str, Session]:
        """A new session (a new id at every sign-in): its cookie value and itself."""
        self._sweep()
        session = Session(secrets.token_urlsafe(32), int(time.time() + self.lifetime_s))
        self._keep(_hash(session.id), session.expires)
        return f"{session.id}.{session.expires}.{self._mac(session)}", session

    def find(self, cookie: str | None) -> Session | None:
        """The live session the cookie names, or None (forged, expired, signed out)."""
        if not cookie or cookie.count(".") != 2:
            return None
        sid, expires, mac = cookie.split(".")
        if not expires.isdigit() or len(sid) > 64:
            return None
        session = Session(sid, int(expires))
        if not hmac.compare_digest(mac.encode(), self._mac(session).encode()):
            return None
        if session.expires <= time.time() or not self._kept(_hash(sid)):
            return None
        return session

    def end(self, session: Session) -> None:
        key = _hash(session.id)
        self._live.pop(key, None)
        if self._dir is not None:
            try:
                os.unlink(os.path.join(self._dir, key))
            except FileNotFoundError:
                pass

    def csrf_token(self, session: Session) -> str:
        return _b64(hmac.digest(self._secret, b"csrf." + session.id.encode(), "sha256"))

    def _mac(self, session: Session) -> str:
        signed = f"{session.id}.{session.expires}".encode()
        return _b64(hmac.digest(self._secret, signed, "sha256"))

    def _keep(self, key: str, expires: int) -> None:
        if self._dir is None:
            self._live[key] = expires
            return
        path = os.path.join(self._dir, key)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)

    def _kept(self, key: str) -> bool:
        if self._dir is None:
            return key in self._live
        return os.path.exists(os.path.join(self._dir, key))

    def _sweep(self) -> None:
        """Forget expired sessions (at each sign-in: the store stays small)."""
        now = time.time()
        if self._dir is None:
            self._live = {k: e for k, e in self._live.items() if e > now}
            return
        for name in os.listdir(self._dir):
            path = os.path.join(self._dir, name)
            try:
                if os.stat(path).st_mtime + self.lifetime_s < now:
                    os.unlink(path)
            except FileNotFoundError:
                pass


def shared_secret(path: str) -> bytes:
    """The server's secret: made once by the first worker to get there, read by the rest.
    Written aside and hard-linked into place, so no worker reads half of it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        pass
    aside = f"{path}.{os.getpid()}"
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    try:
        os.link(aside, path)   # fails when another worker was first: theirs counts
    except FileExistsError:
        pass
    finally:
        os.unlink(aside)
    with open(path, "rb") as f:
        return f.read()


def same_origin(request: web.Request) -> bool:
    """False for a request a browser says came from another site or origin."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True   # not sent by browsers on every same-origin request
    # Behind a reverse proxy that rewrites Host, the page's own host arrives as
    # X-Forwarded-Host: a cross-site page cannot set that header (no CORS on /admin).
    netloc = urlsplit(origin).netloc
    return netloc == request.host or netloc == request.headers.get("X-Forwarded-Host")


def csrf_ok(request: web.Request, sessions: Sessions, session: Session) -> bool:
    given = request.headers.get(CSRF_HEADER, "")
    return same_origin(request) and hmac.compare_digest(
        given.encode(), sessions.csrf_token(session).encode())


def set_cookie(request: web.Request, response: web.StreamResponse, value: str,
               max_age: int) -> None:
    # Secure wherever the browser reached the gateway over TLS (behind a TLS proxy too):
    # without it a plain-HTTP deployment could not sign in at all.
    secure = request.secure or request.headers.get("X-Forwarded-Proto") == "https"
    response.set_cookie(COOKIE, value, max_age=max_age, path="/admin", httponly=True,
                        samesite="Strict", secure=secure)


def _hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
