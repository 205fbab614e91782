"""The one place that talks to runtimes: URLs, headers, timeouts, error translation.

`Upstream.open()` sends a request and returns an `UpstreamResponse` once the
runtime's headers are in, or raises a `gateway.errors` error: aiohttp and
asyncio errors are translated here and nowhere else.
"""

from __future__ import annotations

import asyncio
import functools
from typing import AsyncIterator

import aiohttp
from multidict import CIMultiDict
from yarl import URL

import orjson

from .config import BackendConfig
from .config_redact import REDACTED, SECRET_HEADER
from .echo import EchoResponse
from .errors import (DeadlineExceeded, GatewayError, UpstreamError, UpstreamStatus,
                     UpstreamTimeout)

ENDPOINT_PATHS = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}

# Status codes after which another backend may well succeed.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_ERROR_BODY = 64 * 1024


def make_session(*, limit: int = 0) -> aiohttp.ClientSession:
    """The app's one ClientSession: pooled keep-alive, no hidden caps.

    aiohttp's defaults cap at 100 connections and cut every request at 300 s;
    long generations and many streams need neither. Per-request timeouts come
    from each backend's config instead.
    """
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, keepalive_timeout=60,
                                     ttl_dns_cache=300, enable_cleanup_closed=False)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None),
        # No cookie jar: a cookie one runtime sets must never reach another client's request.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Every aiohttp auto header is set in BackendConfig.request_headers, so none is
        # skipped: skip_auto_headers costs a header-set copy per request.
        auto_decompress=False,
        json_serialize=None)  # type: ignore[arg-type]


class UpstreamResponse:
    """A runtime's answer whose headers have arrived; the body is read on demand."""

    __slots__ = ("status", "content_type", "_resp", "_idle_s")

    def __init__(self, resp: aiohttp.ClientResponse, idle_s: float) -> None:
        self.status = resp.status
        self.content_type = resp.headers.get("Content-Type", "application/json")
        self._resp = resp
        self._idle_s = idle_s

    async def read(self) -> bytes:
        """The whole body. The connection goes back with release() (or close() after
        a failure), which the caller does once the client has its answer."""
        try:
            content = self._resp.content
            if content.is_eof():
                # The usual case: the whole body came with the headers and is taken from
                # the buffer as it is, with no timer and no wait.
                return content.read_nowait()
            async with asyncio.timeout(self._idle_s):
                return await self._resp.read()
        except TimeoutError as exc:
            raise UpstreamTimeout("the runtime stopped sending its answer",
                                  reason="idle_timeout") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"the runtime broke off its answer: {exc.__class__.__name__}",
                                reason="upstream_closed") from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; raises UpstreamTimeout after idle_s of silence."""
        content = self._resp.content
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as deadline:
                watch = IdleWatch(loop, self._idle_s, deadline)
                try:
                    while True:
                        data = await content.readany()
                        if not data:
                            return
                        watch.last = loop.time()
                        yield data
                finally:
                    watch.cancel()
        except TimeoutError as exc:
            raise UpstreamTimeout("the runtime went silent mid-stream",
                                  reason="idle_timeout") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"the runtime broke off the stream: {exc.__class__.__name__}",
                                reason="upstream_closed") from exc

    def close(self) -> None:
        """Drop the connection, so the runtime sees the client go and stops generating."""
        self._resp.close()

    def release(self) -> None:
        self._resp.release()


class IdleWatch:
    """Expires `deadline` once `idle_s` pass with no chunk noted in `last`.

    Rescheduling a timer on every chunk cost more than the rest of the relay's
    per-chunk work; this timer fires once per idle period instead, and re-arms
    from the last chunk's time unless nothing came since it was set.
    """

    __slots__ = ("last", "_armed", "_loop", "_idle", "_deadline", "_handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_s: float,
                 deadline: asyncio.Timeout) -> None:
        self._loop = loop
        self._idle = idle_s
        self._deadline = deadline
        self.last = self._armed = loop.time()
        self._handle: asyncio.TimerHandle | None = loop.call_at(self.last + idle_s, self._check)

    def _check(self) -> None:
        if self.last == self._armed:
            self._handle = None
            self._deadline.reschedule(self._loop.time())   # silent for idle_s: expire now
        else:
            self._armed = self.last
            self._handle = self._loop.call_at(self.last + self._idle, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def upstream_headers(backend: BackendConfig, request_id: str) -> CIMultiDict[str]:
    headers = CIMultiDict(backend.request_headers)
    headers["X-Request-ID"] = request_id
    return headers


@functools.lru_cache(maxsize=1024)
def endpoint_url(api_base: str, endpoint: str) -> URL:
    """The parsed URL of an endpoint, so yarl parses each one once, not once per request."""
    return URL(api_base + ENDPOINT_PATHS[endpoint])


class Upstream:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self._connect_timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _connect_timeout(self, connect_s: float) -> aiohttp.ClientTimeout:
        """One immutable ClientTimeout per connect_s value, not one per request."""
        timeout = self._connect_timeouts.get(connect_s)
        if timeout is None:
            timeout = self._connect_timeouts[connect_s] = aiohttp.ClientTimeout(
                total=None, sock_connect=connect_s, connect=connect_s)
        return timeout

    async def open(self, backend: BackendConfig, endpoint: str, payload: dict,
                   request_id: str, deadline: float | None = None
                   ) -> UpstreamResponse | EchoResponse:
        """Send the request; return once the headers are in, within first_byte_s and
        `deadline` (loop time: the request's overall retry deadline)."""
        if backend.kind == "echo":
            return EchoResponse(endpoint, payload, payload["model"])
        body = orjson.dumps(payload)
        t = backend.timeouts
        url = endpoint_url(backend.api_base, endpoint)
        timeout = self._connect_timeout(t.connect_s)
        # One timer for both limits, whichever comes first.
        limit = asyncio.get_running_loop().time() + t.first_byte_s
        by_deadline = deadline is not None and deadline < limit
        try:
            async with asyncio.timeout_at(deadline if by_deadline else limit):
                resp = await self.session.post(
                    url, data=body, headers=upstream_headers(backend, request_id),
                    timeout=timeout, allow_redirects=False)
                if resp.status >= 400:
                    raise await _status_error(backend, resp)
        except GatewayError:
            raise
        except TimeoutError as exc:
            if by_deadline:
                raise DeadlineExceeded() from exc
            raise UpstreamTimeout(f"backend {backend.name} did not answer within "
                                  f"{t.first_byte_s:g} s", reason="timeout") from exc
        except (aiohttp.ConnectionTimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"backend {backend.name} did not accept a connection within "
                                  f"{t.connect_s:g} s", reason="connect_timeout") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(f"backend {backend.name} refused the connection",
                                reason="connect") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"backend {backend.name} failed: {exc.__class__.__name__}",
                                reason="disconnected") from exc
        return UpstreamResponse(resp, t.idle_s)

    async def get(self, url: str, headers: dict[str, str], timeout_s: float
                  ) -> tuple[int, bytes]:
        """A small GET for health checks and model discovery; errors become UpstreamError."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self.session.get(url, headers=headers,
                                            allow_redirects=False) as resp:
                    return resp.status, await resp.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"GET {url} timed out", reason="timeout") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"GET {url} failed: {exc.__class__.__name__}",
                                reason="connect") from exc


async def _status_error(backend: BackendConfig, resp: aiohttp.ClientResponse) -> GatewayError:
    try:
        body = await resp.content.read(MAX_ERROR_BODY)
    except aiohttp.ClientError:
        body = b""
    finally:
        resp.release()
    status = resp.status
    body = scrub_secrets(body, backend)   # a runtime may echo the key it was sent
    if status in RETRYABLE_STATUSES or (status >= 500 and status != 501):
        retry_after = _retry_after(resp.headers.get("Retry-After"))
        return UpstreamError(f"backend {backend.name} answered {status}",
                             reason=str(status), retry_after=retry_after)
    return UpstreamStatus(status, body, resp.headers.get("Content-Type", "application/json"))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def backend_secrets(backend: BackendConfig) -> list[str]:
    secrets = [v for h, v in backend.headers.items() if v and SECRET_HEADER.search(h)]
    if backend.api_key:
        secrets.append(backend.api_key)
    return secrets


def scrub_secrets(data: bytes, backend: BackendConfig) -> bytes:
    """`data` with every credential sent to `backend` replaced by "***" (raw or JSON-escaped)."""
    for secret in backend_secrets(backend):
        for form in {secret.encode(), orjson.dumps(secret)[1:-1]}:
            if form in data:
                data = data.replace(form, REDACTED.encode())
    return data
